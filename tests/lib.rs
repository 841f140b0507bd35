//! Harness for end-to-end tests: real `tandemd` processes on loopback, driven and observed
//! through the admin protocol, the way an operator's tools would.
//!
//! Tests never sleep to wait for something: they poll a condition with a deadline
//! ([`wait_for`]) and fail with a message saying what did not happen.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tandem_admin::client::{self, AdminClientError};
use tandem_proto::admin::{
    admin_request, NoopReply, OperationDone, ShardStatus, Status, UnitStatus,
};

/// How many queued (write-behind) commits of 128 B the checkpoint benchmark's unit makes per
/// `TANDEM_TEST_BENCH` count: enough for a sustained rate (about a second at a million a
/// second with the default count of 2000), not the ramp-up of a fresh cluster's first
/// milliseconds, which a burst of a few thousand would mostly measure.
pub const QUEUED_SMALL_PER_COUNT: usize = 500;

/// How long one admin call may take in tests.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(1000);
/// Deadline for conditions that depend on elections, restarts and catch-up. Generous: it
/// bounds a failing test's run time, it is not a speed target.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Prefix of the temporary directory each [`TestCluster`] runs in.
const CLUSTER_DIR_PREFIX: &str = "tandem-e2e-";
/// File in a cluster directory naming the process that owns it.
const OWNER_FILE: &str = "owner.pid";

/// A new temporary directory for a cluster, named by its owner (this process). Directories
/// of owners that died without cleaning up are removed first: a test or benchmark killed by a
/// signal skips [`TestCluster`]'s `Drop`, and a state-transfer run leaves gigabytes behind.
fn cluster_dir() -> tempfile::TempDir {
    remove_abandoned_cluster_dirs(&std::env::temp_dir());
    let dir = tempfile::Builder::new()
        .prefix(CLUSTER_DIR_PREFIX)
        .tempdir()
        .expect("temporary directory");
    fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())
        .expect("write the cluster directory's owner");
    dir
}

/// Removes the cluster directories in `parent` whose owner process is gone. One without an
/// owner file yet (its owner is writing it) is left alone.
fn remove_abandoned_cluster_dirs(parent: &std::path::Path) -> usize {
    let Ok(entries) = fs::read_dir(parent) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with(CLUSTER_DIR_PREFIX)
        {
            continue;
        }
        let Some(owner) = fs::read_to_string(entry.path().join(OWNER_FILE))
            .ok()
            .and_then(|text| text.trim().parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks that the process exists.
        let gone = unsafe { libc::kill(owner, 0) } == -1
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone && fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Path of a binary built from this workspace, next to the test executable's directory.
///
/// `cargo test --workspace` builds the binaries before any test runs. Testing one package
/// alone (`-p tandem-e2e`) does not rebuild `tandemd`, so run `cargo build` first in that case.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // Tests run from target/<profile>/deps/, the benchmark from target/<profile>/.
    let exe_dir = exe.parent().expect("executable has a directory");
    let path = [exe_dir, exe_dir.parent().unwrap_or(exe_dir)]
        .iter()
        .map(|dir| dir.join(name))
        .find(|path| path.exists())
        .unwrap_or_else(|| exe_dir.join(name));
    assert!(
        path.exists(),
        "{} is missing; build it first (cargo test --workspace builds it)",
        path.display()
    );
    path
}

/// Polls `probe` every 20 ms until it returns `Some`, or panics after `deadline` naming `what`.
pub fn wait_for<T>(what: &str, deadline: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `count` distinct loopback ports, each free at the time of the call for TCP (and for UDP
/// too when `udp` is set).
///
/// They are drawn at random below the kernel's ephemeral range (read from
/// `/proc/sys/net/ipv4/ip_local_port_range`, 32768 by default). A port in that range is what
/// the kernel hands out for a bind to port 0 and for the local end of every outgoing
/// connection, so between the probe here and the daemon's own bind (or its rebind after a
/// restart) any test running alongside could take it: that race once left a node of a CI run
/// unable to start (`bind peer address …: Address already in use`). Below the range only
/// another explicit draw can collide, and the probe skips ports that are in use.
pub fn free_loopback_ports(count: usize, udp: bool) -> Vec<u16> {
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000u16.min(ephemeral_low.saturating_sub(1000));
    let span = u64::from(ephemeral_low.saturating_sub(low).max(1));
    let mut draw = u64::from(std::process::id())
        ^ SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    let mut ports = Vec::with_capacity(count);
    for _ in 0..1000 * count.max(1) {
        if ports.len() == count {
            break;
        }
        draw = draw
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let port = low + ((draw >> 33) % span) as u16;
        if ports.contains(&port) {
            continue;
        }
        let tcp = TcpListener::bind(("127.0.0.1", port)).is_ok();
        if tcp && (!udp || std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()) {
            ports.push(port);
        }
    }
    assert_eq!(
        ports.len(),
        count,
        "found only {} of {count} free loopback ports below {ephemeral_low}",
        ports.len()
    );
    ports
}

/// A loopback port free for both TCP and UDP, for a shard's ingress address (which binds
/// both); see [`free_loopback_ports`] for where it is drawn from.
pub fn free_ingress_port() -> u16 {
    free_loopback_ports(1, true)[0]
}

/// One node of a test cluster.
#[derive(Debug)]
pub struct TestNode {
    /// Node name (`n1`, `n2`, ...).
    pub name: String,
    /// Admin address.
    pub admin: SocketAddr,
    /// Peer address.
    pub peer: SocketAddr,
    /// The running daemon, if any.
    pub child: Option<Child>,
}

/// A cluster of real daemons in a temporary directory.
#[derive(Debug)]
pub struct TestCluster {
    /// Holds the config, data and logs; removed on drop.
    pub dir: tempfile::TempDir,
    /// The config file.
    pub config_path: PathBuf,
    /// The nodes, in config order (index 0 is `n1`).
    pub nodes: Vec<TestNode>,
}

/// A 2n service `pair` of the test unit: `pair-a` on n1, `pair-b` on n2, shard `pair-0`,
/// recording to the cluster's record file. With `child`, each unit starts a `sleep` child.
/// Restart escalation stays at L1 (restart) however often a unit fails, and units are not
/// relocated, so tests and the benchmark can crash units and nodes again and again.
pub fn pair_service(child: bool) -> String {
    format!(
        "\n[[services]]\nname = \"pair\"\nmodel = \"2n\"\nshards = [\"pair-0\"]\n\
         units = [{{ name = \"pair-a\", node = \"n1\" }}, {{ name = \"pair-b\", node = \"n2\" }}]\n\
         instantiate = [\"{{unit_bin}}\"]\n\
         env = {{ TANDEM_TEST_RECORD = \"{{record}}\", TANDEM_TEST_CHILD = \"{}\" }}\n\
         health_interval_ms = 100\nhealth_timeout_ms = 1000\ncallback_timeout_ms = 2000\n\
         [services.escalation]\nrestart_max = 1000000\nrelocate = false\n",
        if child { 1 } else { 0 }
    )
}

/// The 2n `pair` service of [`pair_service`] whose ACTIVE also writes its checkpoint (key `n`
/// counting up, a sync commit every 2 ms) and, with `bulk` > 0, `bulk` sections of 1 KiB first.
pub fn data_service(bulk: u64) -> String {
    format!(
        "\n[[services]]\nname = \"pair\"\nmodel = \"2n\"\nshards = [\"pair-0\"]\n\
         units = [{{ name = \"pair-a\", node = \"n1\" }}, {{ name = \"pair-b\", node = \"n2\" }}]\n\
         instantiate = [\"{{unit_bin}}\"]\n\
         env = {{ TANDEM_TEST_RECORD = \"{{record}}\", TANDEM_TEST_WRITES = \"1\", TANDEM_TEST_BULK = \"{bulk}\" }}\n\
         health_interval_ms = 100\nhealth_timeout_ms = 1000\ncallback_timeout_ms = 5000\n\
         [services.escalation]\nrestart_max = 1000000\nrelocate = false\n"
    )
}

/// The data directory of node `index`.
pub fn node_data_dir(cluster: &TestCluster, index: usize) -> PathBuf {
    cluster
        .dir
        .path()
        .join("data")
        .join(&cluster.nodes[index].name)
}

/// One line of the test unit's record file (see `test_unit.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// CLOCK_MONOTONIC, ns.
    pub at_ns: u64,
    /// The unit.
    pub unit: String,
    /// Its instance.
    pub generation: u64,
    /// Its pid.
    pub pid: u32,
    /// `start` or `done`.
    pub event: String,
    /// The shard.
    pub shard: String,
    /// The role asked for (`QUIESCED` for quiesce, `NONE` for remove).
    pub role: String,
    /// The shard's epoch.
    pub epoch: u64,
}

/// CLOCK_MONOTONIC now, in ns (the clock the test unit records with).
pub use tandem::monotonic_ns;

/// Intervals during which one unit process acted ACTIVE for `shard`, judged from its records:
/// from the start of an ACTIVE hook to the end of the next hook that leaves ACTIVE, or to the
/// process's death (`deaths`: pid → time) when it died acting, or open (`u64::MAX`).
pub fn active_intervals(
    records: &[Record],
    shard: &str,
    deaths: &BTreeMap<u32, u64>,
) -> Vec<(u32, String, u64, u64)> {
    let mut open: BTreeMap<u32, (String, u64)> = BTreeMap::new();
    let mut intervals = Vec::new();
    for record in records.iter().filter(|record| record.shard == shard) {
        match (record.event.as_str(), record.role.as_str()) {
            ("start", "ACTIVE") => {
                open.entry(record.pid)
                    .or_insert((record.unit.clone(), record.at_ns));
            }
            ("done", "ACTIVE") => {}
            ("done", _) => {
                if let Some((unit, from)) = open.remove(&record.pid) {
                    intervals.push((record.pid, unit, from, record.at_ns));
                }
            }
            _ => {}
        }
    }
    for (pid, (unit, from)) in open {
        let until = deaths.get(&pid).copied().unwrap_or(u64::MAX);
        intervals.push((pid, unit, from, until));
    }
    intervals.sort_by_key(|interval| interval.2);
    intervals
}

/// Panics if two processes' ACTIVE intervals for `shard` overlap.
pub fn assert_one_active(records: &[Record], shard: &str, deaths: &BTreeMap<u32, u64>) {
    let intervals = active_intervals(records, shard, deaths);
    for pair in intervals.windows(2) {
        let (first, second) = (&pair[0], &pair[1]);
        assert!(
            first.3 <= second.2,
            "two units acted ACTIVE for {shard} at once: {first:?} and {second:?} (all: {intervals:?})"
        );
    }
}

/// The shard called `name` in `status`.
pub fn shard<'a>(status: &'a Status, name: &str) -> Option<&'a ShardStatus> {
    status.shards.iter().find(|shard| shard.name == name)
}

/// The unit called `name` in `status`.
pub fn unit<'a>(status: &'a Status, name: &str) -> Option<&'a UnitStatus> {
    status.units.iter().find(|unit| unit.name == name)
}

/// The shard's ACTIVE and STANDBY units when both confirmed their roles.
pub fn settled_pair(status: &Status, name: &str) -> Option<(String, String)> {
    let shard = shard(status, name)?;
    let confirmed = |role: &str| {
        shard
            .roles
            .iter()
            .find(|held| held.role == role && held.confirmed)
            .map(|held| held.unit.clone())
    };
    Some((confirmed("ACTIVE")?, confirmed("STANDBY")?))
}

/// Whether process `pid` exists (and is not a zombie).
pub fn is_alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next())
            .is_some_and(|state| state == 'Z' || state == 'X'),
        Err(_) => false,
    }
}

impl TestCluster {
    /// Writes a config for `count` nodes on loopback and starts every daemon.
    pub fn start(count: usize) -> Self {
        Self::start_with(count, "")
    }

    /// Like [`TestCluster::start`], with `services` appended to the config (`{unit_bin}` and
    /// `{record}` stand for the test unit's binary and the record file).
    pub fn start_with(count: usize, services: &str) -> Self {
        Self::start_with_cluster(count, "", services)
    }

    /// Like [`TestCluster::start_with`], with `cluster` added to the `[cluster]` table (timers).
    pub fn start_with_cluster(count: usize, cluster: &str, services: &str) -> Self {
        let mut cluster = Self::configure(count, cluster, services);
        for index in 0..count {
            cluster.spawn(index);
        }
        cluster
    }

    /// Writes the config [`TestCluster::start_with_cluster`] would, and starts no daemon.
    pub fn configure(count: usize, cluster: &str, services: &str) -> Self {
        let dir = cluster_dir();
        let ports = free_loopback_ports(count * 2, false);
        let mut toml = format!("[cluster]\nname = \"e2e\"\ndata_dir = \"data\"\n{cluster}");
        let mut nodes = Vec::new();
        for index in 0..count {
            let name = format!("n{}", index + 1);
            let peer: SocketAddr = format!("127.0.0.1:{}", ports[2 * index]).parse().unwrap();
            let admin: SocketAddr = format!("127.0.0.1:{}", ports[2 * index + 1])
                .parse()
                .unwrap();
            toml.push_str(&format!(
                "\n[[nodes]]\nname = \"{name}\"\npeer_addr = \"{peer}\"\nadmin_addr = \"{admin}\"\n"
            ));
            nodes.push(TestNode {
                name,
                admin,
                peer,
                child: None,
            });
        }
        let record = dir.path().join("record.log");
        toml.push_str(
            &services
                .replace(
                    "{unit_bin}",
                    &binary("tandem-test-unit").display().to_string(),
                )
                .replace("{record}", &record.display().to_string()),
        );
        let config_path = dir.path().join("tandem.toml");
        fs::write(&config_path, toml).expect("write config");
        fs::create_dir_all(dir.path().join("logs")).expect("create logs dir");
        Self {
            dir,
            config_path,
            nodes,
        }
    }

    /// Log file of node `index`.
    pub fn log_path(&self, index: usize) -> PathBuf {
        self.dir
            .path()
            .join("logs")
            .join(format!("{}.log", self.nodes[index].name))
    }

    /// The node's log so far.
    pub fn log(&self, index: usize) -> String {
        fs::read_to_string(self.log_path(index)).unwrap_or_default()
    }

    /// Waits until node `index`'s log, from byte `from` on, holds `needle`, and returns that
    /// part. The daemon writes its log from a thread of its own, up to a few milliseconds
    /// after the fact: a line about something that just happened may not be there yet.
    pub fn wait_log(&self, index: usize, from: usize, needle: &str) -> String {
        wait_for(
            &format!("{needle:?} in the log of node {index}"),
            DEADLINE,
            || {
                let log = self.log(index);
                let part = log.get(from..)?;
                part.contains(needle).then(|| part.to_owned())
            },
        )
    }

    /// Raft directory of node `index`.
    pub fn raft_dir(&self, index: usize) -> PathBuf {
        self.dir
            .path()
            .join("data")
            .join(&self.nodes[index].name)
            .join("raft")
    }

    /// Starts node `index`'s daemon (its log is appended to).
    pub fn spawn(&mut self, index: usize) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path(index))
            .expect("open node log");
        self.spawn_logging_to(index, log);
    }

    /// Starts node `index`'s daemon with its stdout and stderr on `log`.
    pub fn spawn_logging_to(&mut self, index: usize, log: impl Into<std::os::fd::OwnedFd>) {
        assert!(
            self.nodes[index].child.is_none(),
            "node {index} already running"
        );
        let log = File::from(log.into());
        let mut command = Command::new(binary("tandemd"));
        command
            .arg("--config")
            .arg(&self.config_path)
            .arg("--node")
            .arg(&self.nodes[index].name)
            .env("TANDEM_LOG", "info,raft=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        // A test or benchmark killed by a signal skips `Drop`: its daemons die with it rather
        // than run on (and their units with them: tandemd gives units the same signal).
        // SAFETY: only prctl runs between fork and exec; it is async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("spawn tandemd");
        self.nodes[index].child = Some(child);
    }

    /// Sends `signal` to node `index`'s daemon.
    pub fn signal(&self, index: usize, signal: i32) {
        let child = self.nodes[index].child.as_ref().expect("node is running");
        // SAFETY: kill(2) with a pid we spawned and still hold; no memory is involved.
        let result = unsafe { libc::kill(child.id() as i32, signal) };
        assert_eq!(result, 0, "kill({}, {signal})", child.id());
    }

    /// `kill -9` node `index` and reap it.
    pub fn kill9(&mut self, index: usize) {
        self.signal(index, libc::SIGKILL);
        let mut child = self.nodes[index].child.take().expect("node is running");
        child.wait().expect("reap killed daemon");
    }

    /// SIGTERM node `index` and wait for it to exit; returns whether it exited with success.
    pub fn terminate(&mut self, index: usize) -> bool {
        self.signal(index, libc::SIGTERM);
        let mut child = self.nodes[index].child.take().expect("node is running");
        let status = wait_for("daemon to exit after SIGTERM", DEADLINE, || {
            child.try_wait().expect("poll daemon")
        });
        status.success()
    }

    /// Status as node `index` answers it (it forwards to the leader when it knows one).
    pub fn status(&self, index: usize) -> Option<Status> {
        client::status(self.nodes[index].admin, CALL_TIMEOUT).ok()
    }

    /// Commits a no-op through node `index` (forwarded to the leader).
    pub fn noop(&self, index: usize) -> Option<NoopReply> {
        client::noop(self.nodes[index].admin, CALL_TIMEOUT).ok()
    }

    /// Waits until one of `among` answers with a leader-made status whose leader is in `among`
    /// and returns that status.
    pub fn wait_leader(&self, among: &[usize]) -> Status {
        wait_for("a leader among the running nodes", DEADLINE, || {
            among.iter().find_map(|&index| {
                let status = self.status(index)?;
                let leader = self.index_of(&status.leader)?;
                (status.from_leader && among.contains(&leader)).then_some(status)
            })
        })
    }

    /// Index of the node called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|node| node.name == name)
    }

    /// The leader's status, asked of any running node (followers forward it).
    pub fn leader_status(&self) -> Option<Status> {
        (0..self.nodes.len())
            .filter(|index| self.nodes[*index].child.is_some())
            .find_map(|index| self.status(index).filter(|status| status.from_leader))
    }

    /// The leader's status, waiting for one to answer (one may be being elected).
    pub fn wait_leader_status(&self) -> Status {
        wait_for("a leader to answer", DEADLINE, || self.leader_status())
    }

    /// Waits until `shard` has a confirmed ACTIVE and a confirmed STANDBY; returns them.
    pub fn wait_settled(&self, shard: &str) -> (String, String) {
        wait_for(
            &format!("{shard} to have a confirmed ACTIVE and STANDBY"),
            DEADLINE,
            || settled_pair(&self.leader_status()?, shard),
        )
    }

    /// Waits until `shard` has a confirmed ACTIVE and a confirmed STANDBY that the cluster
    /// committed as in sync (a switchover may go to it); returns them.
    pub fn wait_in_sync(&self, shard: &str) -> (String, String) {
        wait_for(
            &format!("{shard} to have a confirmed ACTIVE and an in-sync STANDBY"),
            DEADLINE,
            || {
                let status = self.leader_status()?;
                let pair = settled_pair(&status, shard)?;
                let record = status.shards.iter().find(|s| s.name == shard)?;
                record.in_sync.contains(&pair.1).then_some(pair)
            },
        )
    }

    /// Runs an operation through node `index` (forwarded to the leader).
    pub fn operation(
        &self,
        index: usize,
        kind: admin_request::Kind,
    ) -> Result<OperationDone, AdminClientError> {
        client::operation(self.nodes[index].admin, kind, DEADLINE)
    }

    /// Every line of the test unit's record file so far.
    pub fn records(&self) -> Vec<Record> {
        let text = fs::read_to_string(self.dir.path().join("record.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                let [at, unit, generation, pid, event, shard, role, epoch] = fields[..] else {
                    return None;
                };
                Some(Record {
                    at_ns: at.parse().ok()?,
                    unit: unit.to_owned(),
                    generation: generation.parse().ok()?,
                    pid: pid.parse().ok()?,
                    event: event.to_owned(),
                    shard: shard.to_owned(),
                    role: role.to_owned(),
                    epoch: epoch.parse().ok()?,
                })
            })
            .collect()
    }

    /// The log of unit `unit` on node `index`.
    pub fn unit_log(&self, index: usize, unit: &str) -> String {
        let path = self
            .dir
            .path()
            .join("data")
            .join(&self.nodes[index].name)
            .join("units")
            .join(format!("{unit}.log"));
        fs::read_to_string(path).unwrap_or_default()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failing test shows what every daemon said; CI output is all we get.
            for index in 0..self.nodes.len() {
                eprintln!(
                    "----- log of {} -----\n{}",
                    self.nodes[index].name,
                    self.log(index)
                );
            }
        }
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::env::var_os("TANDEM_E2E_KEEP").is_some() {
            // For a look afterwards: the config, every daemon's log, data and unit logs.
            // Without an owner, no later run takes it for abandoned.
            let _ = fs::remove_file(self.dir.path().join(OWNER_FILE));
            let dir = std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("temporary directory"),
            );
            eprintln!(
                "TANDEM_E2E_KEEP: the cluster's directory stays at {}",
                dir.keep().display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cluster_directories_of_owners_that_are_gone_are_removed() {
        let parent = tempfile::tempdir().expect("tempdir");
        // A process that ran and was reaped: its pid names no process now.
        let mut child = Command::new("true").spawn().expect("spawn true");
        let dead = child.id();
        child.wait().expect("wait");
        let make = |name: &str, owner: Option<u32>| {
            let dir = parent.path().join(name);
            fs::create_dir(&dir).expect("mkdir");
            fs::write(dir.join("data"), b"x").expect("write");
            if let Some(owner) = owner {
                fs::write(dir.join(OWNER_FILE), owner.to_string()).expect("write owner");
            }
            dir
        };
        let abandoned = make("tandem-e2e-abandoned", Some(dead));
        let live = make("tandem-e2e-live", Some(std::process::id()));
        let unowned = make("tandem-e2e-kept", None);
        let foreign = make("someone-else", Some(dead));
        assert_eq!(remove_abandoned_cluster_dirs(parent.path()), 1);
        assert!(!abandoned.exists());
        assert!(live.exists() && unowned.exists() && foreign.exists());
    }
}
