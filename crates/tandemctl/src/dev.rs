//! `tandemctl dev up|down`: a local cluster of real daemons in one directory.
//!
//! Layout of the directory (default `.tandem`):
//! - `tandem.toml`: the config, written with `Config::to_toml`;
//! - `data/<node>`: each node's Raft log and snapshots (the daemon creates it);
//! - `logs/<node>.log`: each daemon's stdout and stderr, appended across runs;
//! - `pids/<node>.pid`: the pid of each running daemon, removed by `dev down`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tandem_admin::client;
use tandem_admin::config::{self, ClusterConfig, Config, NodeConfig};
use tandem_core::{NodeId, RedundancyModel, ServiceSpec, Topology, UnitSpec};
use tandem_proto::admin::ShardStatus;

use crate::cli::{DevDownArgs, DevTrafficArgs, DevUpArgs, DEFAULT_CONFIG};
use crate::render::say;

/// Name of the cluster `dev up` writes.
pub const DEV_CLUSTER_NAME: &str = "dev";
/// Environment variable naming the tandemd binary to start.
pub const TANDEMD_BIN_ENV: &str = "TANDEMD_BIN";
/// Environment variable naming the counter example binary.
pub const COUNTER_BIN_ENV: &str = "TANDEM_COUNTER_BIN";
/// Environment variable naming the SIP example binary.
pub const SIP_BIN_ENV: &str = "TANDEM_SIP_BIN";
/// Offset between a node's peer port and its admin port.
pub const ADMIN_PORT_OFFSET: u16 = 100;
/// How long `dev up` waits for a leader and every node to answer.
const UP_DEADLINE: Duration = Duration::from_secs(30);
/// How often `dev up` and `dev down` look again.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long `dev down` lets daemons shut down after SIGTERM before SIGKILL.
const DOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a failed `dev up` lets the daemons it started shut down before SIGKILL.
const ABORT_GRACE: Duration = Duration::from_secs(5);
/// How long one status probe during `dev up` may take: short, because the probes repeat.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Lines of a daemon's log shown when it fails.
const LOG_TAIL_LINES: usize = 20;

/// Peer and admin addresses of node `index` (1-based) for port base `base_port`:
/// `127.0.0.1:(base+index)` and `127.0.0.1:(base+100+index)`.
pub fn dev_addresses(base_port: u16, index: u16) -> anyhow::Result<(SocketAddr, SocketAddr)> {
    let peer = base_port.checked_add(index);
    let admin = peer.and_then(|port| port.checked_add(ADMIN_PORT_OFFSET));
    match (peer, admin) {
        (Some(peer), Some(admin)) => Ok((
            SocketAddr::from((Ipv4Addr::LOCALHOST, peer)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, admin)),
        )),
        _ => bail!("--base-port {base_port} is too high: node n{index}'s ports pass 65535"),
    }
}

/// The application a dev cluster runs, with its binary.
#[derive(Debug, Clone, Copy)]
pub enum DevApp<'a> {
    /// `examples/counter`.
    Counter(&'a Path),
    /// `examples/sip`.
    Sip(&'a Path),
}

/// The SIP call server of `dev up --app sip`: a 2n pair `sip-a` (n1) / `sip-b` (n2), shard
/// `sip-0`, whose UDP ingress 127.0.0.1:5060 follows the ACTIVE.
pub fn sip_service(nodes: u16, sip: &Path) -> ServiceSpec {
    pair_service("sip", nodes, sip, SocketAddr::from(([127, 0, 0, 1], 5060)))
}

/// The UDP ingress of the dev counter's shard: 127.0.0.1:(P+300), 7400 by default.
pub fn counter_ingress(base_port: u16) -> anyhow::Result<SocketAddr> {
    match base_port.checked_add(300) {
        Some(port) => Ok(SocketAddr::from(([127, 0, 0, 1], port))),
        None => bail!("--base-port {base_port} is too high for the counter's ingress port"),
    }
}

/// The counter service of a dev cluster running `counter` (the example's binary): a 2n pair
/// with `counter-a` on n1 and `counter-b` on n2 (one unit with no redundancy on a 1-node
/// cluster), one shard `counter-0` whose UDP ingress `ingress` follows its ACTIVE.
pub fn counter_service(nodes: u16, counter: &Path, ingress: SocketAddr) -> ServiceSpec {
    pair_service("counter", nodes, counter, ingress)
}

/// Service `name` running `binary`: units `<name>-a` on n1 and `<name>-b` on n2 (2n; one
/// unit without redundancy on a 1-node cluster), one shard `<name>-0` whose UDP ingress
/// `ingress` follows its ACTIVE.
fn pair_service(name: &str, nodes: u16, binary: &Path, ingress: SocketAddr) -> ServiceSpec {
    let units = (1..=nodes.min(2))
        .map(|node| UnitSpec {
            name: format!("{name}-{}", if node == 1 { "a" } else { "b" }).into(),
            node: NodeId(u64::from(node)),
            rank: 0,
        })
        .collect();
    let model = if nodes >= 2 {
        RedundancyModel::TwoN
    } else {
        RedundancyModel::NoRedundancy
    };
    let shard = format!("{name}-0");
    let mut service = ServiceSpec::new(
        name,
        model,
        units,
        vec![shard.as_str().into()],
        vec![binary.display().to_string()],
    );
    service.ingress.insert(
        shard.into(),
        tandem_core::IngressSpec {
            udp: Some(ingress.to_string()),
            tcp: None,
        },
    );
    service
}

/// The config of a dev cluster of `nodes` nodes in `dir` (an absolute path, so that the
/// daemons need not share tandemctl's working directory): default timers, data in
/// `dir/data`, nodes `n1..nN` on loopback, and the application's service when `app` names
/// one.
pub fn dev_config(
    nodes: u16,
    base_port: u16,
    dir: &Path,
    app: Option<DevApp<'_>>,
) -> anyhow::Result<Config> {
    let node_configs: Vec<NodeConfig> = (1..=nodes)
        .map(|index| {
            let (peer_addr, admin_addr) = dev_addresses(base_port, index)?;
            Ok(NodeConfig {
                name: format!("n{index}"),
                id: u64::from(index),
                peer_addr,
                admin_addr,
                rank: 0,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let topology = Topology {
        services: match app {
            Some(DevApp::Counter(path)) => {
                vec![counter_service(nodes, path, counter_ingress(base_port)?)]
            }
            Some(DevApp::Sip(path)) => vec![sip_service(nodes, path)],
            None => Vec::new(),
        },
        ..Topology::default()
    };
    Ok(Config {
        path: dir.join("tandem.toml"),
        cluster: ClusterConfig {
            name: DEV_CLUSTER_NAME.into(),
            data_dir: dir.join("data"),
            heartbeat_interval_ms: config::DEFAULT_HEARTBEAT_INTERVAL_MS,
            node_timeout_ms: config::DEFAULT_NODE_TIMEOUT_MS,
            raft_tick_ms: config::DEFAULT_RAFT_TICK_MS,
            raft_heartbeat_ticks: config::DEFAULT_RAFT_HEARTBEAT_TICKS,
            raft_election_ticks: config::DEFAULT_RAFT_ELECTION_TICKS,
            snapshot_interval_entries: config::DEFAULT_SNAPSHOT_INTERVAL_ENTRIES,
            frame_len_max: config::DEFAULT_FRAME_LEN_MAX,
            admin_timeout_ms: config::DEFAULT_ADMIN_TIMEOUT_MS,
            voters: config::default_voters(node_configs.len()),
            lease_ms: config::DEFAULT_LEASE_MS,
            replica_sync_interval_us: config::DEFAULT_REPLICA_SYNC_INTERVAL_US,
            replica_sync_interval_in_sync_us: config::DEFAULT_REPLICA_SYNC_INTERVAL_IN_SYNC_US,
            idle_poll_us: config::DEFAULT_IDLE_POLL_US,
            unit_idle_poll_us: config::DEFAULT_UNIT_IDLE_POLL_US,
            node_restart: None,
        },
        nodes: node_configs,
        topology,
    })
}

/// Finds an example's binary: `$<variable>`, else `examples/<name>` next to the running
/// tandemctl (where `cargo build --release --examples` puts it).
fn find_example(name: &str, variable: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(variable).filter(|value| !value.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "{variable}={} is not a file; point it at the built {name} example",
                path.display()
            );
        }
        return std::path::absolute(&path).with_context(|| format!("resolve {}", path.display()));
    }
    let exe = std::env::current_exe().context("find the running tandemctl executable")?;
    let dir = exe.parent().unwrap_or_else(|| Path::new("."));
    let candidate = dir.join("examples").join(name);
    if candidate.is_file() {
        return Ok(candidate);
    }
    bail!(
        "cannot find the {name} example at {}; build it with `cargo build --release --examples`, \
         set {variable} to its path, or pass --app none",
        candidate.display()
    )
}

/// Finds the tandemd binary: `$TANDEMD_BIN`, else `tandemd` next to the running executable.
fn find_tandemd() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(TANDEMD_BIN_ENV).filter(|value| !value.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "{TANDEMD_BIN_ENV}={} is not a file; point it at a built tandemd",
                path.display()
            );
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("find the running tandemctl executable")?;
    let dir = exe.parent().unwrap_or_else(|| Path::new("."));
    let candidate = dir.join("tandemd");
    if candidate.is_file() {
        return Ok(candidate);
    }
    bail!(
        "cannot find tandemd next to tandemctl in {}; build both with `cargo build --release \
         -p tandemd -p tandemctl`, or set {TANDEMD_BIN_ENV} to tandemd's path",
        dir.display()
    )
}

/// Quotes `text` for a POSIX shell when it needs it, for the commands `dev up` suggests.
fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@%,".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

// ---------------------------------------------------------------------------------------------
// Processes and pid files.

/// A pid file in `DIR/pids`.
#[derive(Debug)]
struct PidFile {
    /// Node name (the file name without `.pid`).
    node: String,
    /// The file.
    path: PathBuf,
    /// The pid it holds, or `None` when it holds no usable pid.
    pid: Option<libc::pid_t>,
}

/// Reads every `*.pid` in `dir`, sorted by node name. A missing directory holds none.
fn read_pid_files(dir: &Path) -> anyhow::Result<Vec<PidFile>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("list {}", dir.display())),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("list {}", dir.display()))?
            .path();
        if path.extension().is_none_or(|ext| ext != "pid") {
            continue;
        }
        let node = path
            .file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = fs::read_to_string(&path).unwrap_or_default();
        // Only pids above 1 are usable: kill(0 or -1, ...) would signal whole groups, and
        // pid 1 is init.
        let pid = text
            .trim()
            .parse::<libc::pid_t>()
            .ok()
            .filter(|pid| *pid > 1);
        files.push(PidFile { node, path, pid });
    }
    files.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(files)
}

/// True while process `pid` exists and is not a zombie.
fn is_alive(pid: libc::pid_t) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists and may be signalled.
    let result = unsafe { libc::kill(pid, 0) };
    if result != 0 {
        // EPERM: it exists but belongs to someone else.
        return io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    }
    // A zombie (exited, not yet reaped by its parent) still answers kill(0). On Linux, read
    // its state; elsewhere assume alive.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X'))
        }
        Err(_) => true,
    }
}

/// False when `pid` is known to run something other than tandemd, so that a pid reused by
/// an unrelated process after a crash is never signalled. True when it cannot be told.
fn runs_tandemd(pid: libc::pid_t) -> bool {
    match fs::read(format!("/proc/{pid}/cmdline")) {
        // A daemon, or the traffic generator (`tandemctl dev traffic`).
        Ok(cmdline) => {
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains("tandemd") || cmdline.contains("tandemctl")
        }
        Err(_) => true,
    }
}

/// Sends `signal` to `pid`, ignoring a process that is already gone.
fn signal(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall; `pid` is > 1 (checked when the pid file was read or taken from a
    // child we spawned), so this never targets a process group.
    if unsafe { libc::kill(pid, signal) } == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(error)
    }
}

/// Polls until every pid in `pids` is gone or `grace` passes; returns the survivors.
fn wait_for_exit(pids: &[libc::pid_t], grace: Duration) -> Vec<libc::pid_t> {
    let deadline = Instant::now() + grace;
    loop {
        let alive: Vec<libc::pid_t> = pids.iter().copied().filter(|p| is_alive(*p)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// The last `count` lines of `path` from byte `from` on (this run's part of an appended log).
fn log_tail(path: &Path, from: u64, count: usize) -> String {
    let mut text = String::new();
    let read = File::open(path).and_then(|mut file| {
        file.seek(SeekFrom::Start(from))?;
        // Bound what we read: a daemon stuck in a loop can write a lot.
        let mut bytes = Vec::new();
        file.take(4 * 1024 * 1024).read_to_end(&mut bytes)?;
        text = String::from_utf8_lossy(&bytes).into_owned();
        Ok(())
    });
    if let Err(error) = read {
        return format!("(cannot read {}: {error})\n", path.display());
    }
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return "(the log is empty)\n".to_string();
    }
    let mut out = lines[lines.len().saturating_sub(count)..].join("\n");
    out.push('\n');
    out
}

// ---------------------------------------------------------------------------------------------
// dev up

/// A daemon started by `dev up`.
struct Started {
    /// Its node.
    node: NodeConfig,
    /// The process.
    child: Child,
    /// Its log file.
    log: PathBuf,
    /// Length of the log before this run, so that failures show only this run's lines.
    log_start: u64,
    /// Its pid file.
    pid_file: PathBuf,
}

/// Stops daemons that `dev up` started (SIGTERM, then SIGKILL after `grace`), reaps them and
/// removes their pid files. Best effort: it runs while reporting another error.
fn abort(started: &mut [Started], grace: Duration) {
    for daemon in started.iter() {
        if let Ok(pid) = libc::pid_t::try_from(daemon.child.id()) {
            let _ = signal(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + grace;
    for daemon in started.iter_mut() {
        loop {
            match daemon.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = daemon.child.kill();
                    let _ = daemon.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(POLL_INTERVAL),
            }
        }
        let _ = fs::remove_file(&daemon.pid_file);
    }
    eprintln!("stopped the daemons this `dev up` started");
}

/// Refuses ports that something already listens on, with the port named; a daemon would
/// otherwise fail at bind and the user would have to find out why in its log.
fn check_ports_free(config: &Config) -> anyhow::Result<()> {
    for node in &config.nodes {
        for addr in [node.peer_addr, node.admin_addr] {
            if let Err(error) = TcpListener::bind(addr) {
                bail!(
                    "cannot use {addr} for {}: {error} (another cluster running? pick other \
                     ports with --base-port)",
                    node.name
                );
            }
        }
    }
    Ok(())
}

/// Writes `text` to `path` through a temporary file and a rename, so that a reader never
/// sees half a config.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let temporary = path.with_extension("toml.tmp");
    let mut file =
        File::create(&temporary).with_context(|| format!("create {}", temporary.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("write {}", temporary.display()))?;
    fs::rename(&temporary, path).with_context(|| format!("rename to {}", path.display()))
}

/// What the cluster looked like at one poll.
#[derive(Debug, Default, PartialEq, Eq)]
struct Progress {
    /// Nodes that answered a status request.
    answered: Vec<String>,
    /// Nodes that did not.
    silent: Vec<String>,
    /// The leader, when an answer came from one.
    leader: Option<String>,
    /// Shards of the configured services that have no confirmed ACTIVE unit yet (as the
    /// leader sees them), including those the leader has not installed yet.
    unassigned: Vec<String>,
    /// Shards with a confirmed ACTIVE whose model gives them a STANDBY, but that have no
    /// confirmed STANDBY in sync yet.
    unprotected: Vec<String>,
}

impl Progress {
    fn done(&self) -> bool {
        self.leader.is_some()
            && self.silent.is_empty()
            && self.unassigned.is_empty()
            && self.unprotected.is_empty()
    }

    fn describe(&self) -> String {
        match &self.leader {
            _ if self.answered.is_empty() => "waiting for the daemons to listen...".into(),
            None => format!(
                "waiting for a leader... ({} of {} nodes answer)",
                self.answered.len(),
                self.answered.len() + self.silent.len()
            ),
            Some(leader) if !self.silent.is_empty() => format!(
                "leader {leader}; waiting for {} to answer...",
                self.silent.join(", ")
            ),
            Some(leader) if !self.unassigned.is_empty() => format!(
                "leader {leader}; waiting for {} to get an ACTIVE unit...",
                self.unassigned.join(", ")
            ),
            Some(leader) => format!(
                "leader {leader}; waiting for {} to get a STANDBY in sync...",
                self.unprotected.join(", ")
            ),
        }
    }
}

/// Asks every node for its status once.
fn probe(config: &Config) -> Progress {
    let mut progress = Progress {
        unassigned: config
            .topology
            .services
            .iter()
            .flat_map(|service| service.shards.iter().map(|shard| shard.0.clone()))
            .collect(),
        ..Progress::default()
    };
    let mut leader_view = None;
    for node in &config.nodes {
        match client::status(node.admin_addr, PROBE_TIMEOUT) {
            Ok(status) => {
                progress.answered.push(node.name.clone());
                if status.from_leader && !status.leader.is_empty() {
                    progress.leader = Some(status.leader.clone());
                    leader_view = Some(status);
                }
            }
            Err(_) => progress.silent.push(node.name.clone()),
        }
    }
    // A node counts only once the leader has heard its heartbeat, so the first
    // `tandemctl status` after `dev up` shows every node's figures, not blanks.
    if let Some(view) = leader_view {
        for node in &view.nodes {
            let reported = node.leader || node.heartbeat_age_ms.is_some();
            if !reported && progress.answered.contains(&node.name) {
                progress.answered.retain(|name| name != &node.name);
                progress.silent.push(node.name.clone());
            }
        }
        // The service is up when each of its shards has an ACTIVE unit that confirmed it
        // and, where its model keeps one, a STANDBY that confirmed its role and is in sync:
        // the first switchover an operator tries after `dev up` then has a target.
        let mut unprotected = Vec::new();
        progress.unassigned.retain(|name| {
            let Some(shard) = view.shards.iter().find(|shard| &shard.name == name) else {
                return true;
            };
            if confirmed(shard, "ACTIVE").next().is_none() {
                return true;
            }
            let keeps_standby = config
                .topology
                .services
                .iter()
                .find(|service| service.shards.iter().any(|shard| &shard.0 == name))
                .is_some_and(|service| service.model.has_standby() && service.units.len() > 1);
            let protected =
                confirmed(shard, "STANDBY").any(|unit| shard.in_sync.iter().any(|u| u == unit));
            if keeps_standby && !protected {
                unprotected.push(name.clone());
            }
            false
        });
        progress.unprotected = unprotected;
    }
    progress
}

/// The units that confirmed `role` for `shard`.
fn confirmed<'a>(shard: &'a ShardStatus, role: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    shard
        .roles
        .iter()
        .filter(move |status| status.role == role && status.confirmed)
        .map(|status| status.unit.as_str())
}

/// `tandemctl dev up`.
pub fn up(args: &DevUpArgs) -> anyhow::Result<()> {
    let dir = std::path::absolute(&args.dir)
        .with_context(|| format!("resolve {}", args.dir.display()))?;
    let pids_dir = dir.join("pids");
    let logs_dir = dir.join("logs");
    for sub in [&dir, &pids_dir, &logs_dir] {
        fs::create_dir_all(sub).with_context(|| format!("create {}", sub.display()))?;
    }
    let dir_arg = shell_quote(&args.dir.display().to_string());

    let mut running = Vec::new();
    for file in read_pid_files(&pids_dir)? {
        match file.pid {
            Some(pid) if is_alive(pid) && runs_tandemd(pid) => running.push(pid.to_string()),
            // Left behind by a daemon that died or a crashed tandemctl: nothing to stop.
            _ => {
                let _ = fs::remove_file(&file.path);
            }
        }
    }
    if !running.is_empty() {
        bail!(
            "a dev cluster in {} is already running (pids {}); run `tandemctl dev down --dir \
             {dir_arg}` first",
            args.dir.display(),
            running.join(", ")
        );
    }

    let tandemd = find_tandemd()?;
    let binary = match args.app.as_str() {
        "counter" => Some(find_example("counter", COUNTER_BIN_ENV)?),
        "sip" => Some(find_example("sip", SIP_BIN_ENV)?),
        _ => None,
    };
    let app = binary.as_deref().map(|path| match args.app.as_str() {
        "sip" => DevApp::Sip(path),
        _ => DevApp::Counter(path),
    });
    let counter = matches!(app, Some(DevApp::Counter(_)));
    let mut config = dev_config(args.nodes, args.base_port, &dir, app)?;
    config.cluster.idle_poll_us = args.idle_poll_us;
    check_ports_free(&config)?;
    if args.fresh {
        match fs::remove_dir_all(&config.cluster.data_dir) {
            Ok(()) => say(&format!("removed {}", config.cluster.data_dir.display())),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("remove {}", config.cluster.data_dir.display()))
            }
        }
    } else if config.cluster.data_dir.exists() {
        say(&format!(
            "reusing the Raft state in {} (pass --fresh to start empty)",
            config.cluster.data_dir.display()
        ));
    }
    write_atomically(&config.path, &config.to_toml())?;
    // Read it back as a daemon will, so a bug in writing shows here and not in n logs.
    let written = Config::load(&config.path).context("check the written config")?;
    anyhow::ensure!(
        written == config,
        "{} does not read back as written (this is a bug in Config::to_toml)",
        config.path.display()
    );
    say(&format!("wrote {}", config.path.display()));

    let mut started: Vec<Started> = Vec::new();
    for node in &config.nodes {
        match spawn(&tandemd, &config, node, &dir) {
            Ok(daemon) => started.push(daemon),
            Err(error) => {
                abort(&mut started, ABORT_GRACE);
                return Err(error);
            }
        }
    }
    say(&format!(
        "started {} daemons ({})",
        started.len(),
        tandemd.display()
    ));

    let deadline = Instant::now() + UP_DEADLINE;
    let mut last_said = String::new();
    let leader = loop {
        for index in 0..started.len() {
            let exited = match started[index].child.try_wait() {
                Ok(exit) => exit.map(|status| status.to_string()),
                Err(error) => Some(format!("cannot be watched ({error})")),
            };
            if let Some(how) = exited {
                let daemon = &started[index];
                let name = daemon.node.name.clone();
                eprintln!(
                    "--- last lines of {} ---\n{}---",
                    daemon.log.display(),
                    log_tail(&daemon.log, daemon.log_start, LOG_TAIL_LINES)
                );
                abort(&mut started, ABORT_GRACE);
                bail!(
                    "tandemd for {name} exited early ({how}); its log is above and in {}",
                    logs_dir.join(format!("{name}.log")).display()
                );
            }
        }
        let progress = probe(&config);
        if progress.done() {
            break progress.leader.unwrap_or_default();
        }
        let said = progress.describe();
        if said != last_said {
            say(&said);
            last_said = said;
        }
        if Instant::now() >= deadline {
            for daemon in &started {
                eprintln!(
                    "--- last lines of {} ---\n{}---",
                    daemon.log.display(),
                    log_tail(&daemon.log, daemon.log_start, LOG_TAIL_LINES / 2)
                );
            }
            abort(&mut started, ABORT_GRACE);
            bail!(
                "the cluster did not come up within {} s ({}); logs are in {}",
                UP_DEADLINE.as_secs(),
                progress.describe().trim_end_matches("..."),
                logs_dir.display()
            );
        }
        std::thread::sleep(POLL_INTERVAL);
    };

    let rows: Vec<Vec<String>> = started
        .iter()
        .map(|daemon| {
            vec![
                daemon.node.name.clone(),
                daemon.child.id().to_string(),
                daemon.node.admin_addr.to_string(),
                daemon.node.peer_addr.to_string(),
                daemon.log.display().to_string(),
            ]
        })
        .collect();
    let mut summary = format!(
        "dev cluster {:?} is up: {} nodes, leader {leader}\nconfig {}\n",
        config.cluster.name,
        started.len(),
        config.path.display()
    );
    summary.push_str(&crate::render::table(
        &["NODE", "PID", "ADMIN", "PEER", "LOG"],
        &rows,
    ));
    if matches!(app, Some(DevApp::Sip(_))) {
        summary.push_str(
            "SIP: calls to udp 127.0.0.1:5060, e.g. `sipp -sn uac 127.0.0.1:5060 -m 10 -r 2 -d 2000`\n",
        );
    }
    if counter {
        let ingress = counter_ingress(args.base_port)?;
        match start_traffic(&dir, ingress) {
            Ok(pid) => summary.push_str(&format!(
                "traffic: 50 messages/s (+1 each) to counter-0's ingress udp {ingress} (pid {pid}); \
                 the ACTIVE replies with the count, logged in {}\n",
                logs_dir.join("traffic.log").display()
            )),
            Err(error) => summary.push_str(&format!("traffic not started: {error:#}\n")),
        }
    }
    let is_default_dir = args.dir == Path::new(DEFAULT_CONFIG).parent().unwrap_or(Path::new(""));
    if is_default_dir {
        summary.push_str("next: tandemctl status; tandemctl dev down\n");
    } else {
        let config_arg = shell_quote(&config.path.display().to_string());
        summary.push_str(&format!(
            "next: tandemctl --config {config_arg} status; tandemctl dev down --dir {dir_arg}\n"
        ));
    }
    crate::render::emit(&summary)
}

/// Starts the daemon of `node` in its own session, output appended to its log, and writes
/// its pid file.
fn spawn(
    tandemd: &Path,
    config: &Config,
    node: &NodeConfig,
    dir: &Path,
) -> anyhow::Result<Started> {
    let log = dir.join("logs").join(format!("{}.log", node.name));
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("open {}", log.display()))?;
    let log_start = log_file.metadata().map(|meta| meta.len()).unwrap_or(0);
    let stderr = log_file
        .try_clone()
        .with_context(|| format!("open {}", log.display()))?;
    let mut command = Command::new(tandemd);
    command
        .arg("--config")
        .arg(&config.path)
        .arg("--node")
        .arg(&node.name)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(stderr);
    // SAFETY: setsid is async-signal-safe, as pre_exec requires. A new session detaches the
    // daemon from tandemctl's terminal and process group, so Ctrl-C on tandemctl or closing
    // the terminal does not stop the cluster.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .spawn()
        .with_context(|| format!("start {} for {}", tandemd.display(), node.name))?;
    let pid_file = dir.join("pids").join(format!("{}.pid", node.name));
    let mut daemon = Started {
        node: node.clone(),
        child,
        log,
        log_start,
        pid_file,
    };
    if let Err(error) = fs::write(&daemon.pid_file, format!("{}\n", daemon.child.id())) {
        abort(std::slice::from_mut(&mut daemon), ABORT_GRACE);
        return Err(error).with_context(|| format!("write {}", daemon.pid_file.display()));
    }
    Ok(daemon)
}

// ---------------------------------------------------------------------------------------------
// dev down

/// `tandemctl dev down`.
pub fn down(args: &DevDownArgs) -> anyhow::Result<()> {
    let pids_dir = args.dir.join("pids");
    let files = read_pid_files(&pids_dir)?;
    let mut running: Vec<(String, libc::pid_t)> = Vec::new();
    let mut stale = 0usize;
    for file in &files {
        match file.pid {
            Some(pid) if is_alive(pid) && runs_tandemd(pid) => {
                signal(pid, libc::SIGTERM)
                    .with_context(|| format!("send SIGTERM to {} (pid {pid})", file.node))?;
                running.push((file.node.clone(), pid));
            }
            _ => stale += 1,
        }
    }
    if !running.is_empty() {
        say(&format!(
            "sent SIGTERM to {}; waiting up to {} s...",
            describe_daemons(&running),
            DOWN_GRACE.as_secs()
        ));
    }
    let pids: Vec<libc::pid_t> = running.iter().map(|(_, pid)| *pid).collect();
    let stragglers = wait_for_exit(&pids, DOWN_GRACE);
    let mut survivors = Vec::new();
    if !stragglers.is_empty() {
        let killed: Vec<(String, libc::pid_t)> = running
            .iter()
            .filter(|(_, pid)| stragglers.contains(pid))
            .cloned()
            .collect();
        for (node, pid) in &killed {
            signal(*pid, libc::SIGKILL)
                .with_context(|| format!("send SIGKILL to {node} (pid {pid})"))?;
        }
        say(&format!(
            "{} did not stop within {} s; sent SIGKILL",
            describe_daemons(&killed),
            DOWN_GRACE.as_secs()
        ));
        survivors = wait_for_exit(&stragglers, Duration::from_secs(2));
    }

    for file in &files {
        // Keep the pid file of a process that survived even SIGKILL, so a retry finds it.
        if file.pid.is_some_and(|pid| survivors.contains(&pid)) {
            continue;
        }
        if let Err(error) = fs::remove_file(&file.path) {
            if error.kind() != io::ErrorKind::NotFound {
                return Err(error).with_context(|| format!("remove {}", file.path.display()));
            }
        }
    }
    if !survivors.is_empty() {
        bail!(
            "pids {:?} are still alive after SIGKILL (stuck in the kernel?); check them with ps",
            survivors
        );
    }
    // Pid files of daemons that had died already (crashed, or killed by hand).
    let note = if stale > 0 {
        format!(" (removed {stale} stale pid files)")
    } else {
        String::new()
    };
    if running.is_empty() {
        say(&format!(
            "nothing was running in {}{note}",
            args.dir.display()
        ));
    } else {
        say(&format!("stopped {}{note}", describe_daemons(&running)));
    }
    Ok(())
}

/// `n1 (pid 12), n2 (pid 13)`.
fn describe_daemons(daemons: &[(String, libc::pid_t)]) -> String {
    daemons
        .iter()
        .map(|(node, pid)| format!("{node} (pid {pid})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Starts `tandemctl dev traffic` in its own session, output to `dir/logs/traffic.log`, pid in
/// `dir/pids/traffic.pid` (so `dev down` stops it with the daemons).
fn start_traffic(dir: &Path, ingress: SocketAddr) -> anyhow::Result<u32> {
    let me = std::env::current_exe().context("find tandemctl's own binary")?;
    let log = dir.join("logs").join("traffic.log");
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .with_context(|| format!("open {}", log.display()))?;
    let err = out.try_clone()?;
    let mut command = Command::new(me);
    command
        .args(["dev", "traffic", "--to", &ingress.to_string()])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: setsid is async-signal-safe, as pre_exec requires (see `spawn`).
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().context("start the traffic generator")?;
    let pid = child.id();
    fs::write(dir.join("pids").join("traffic.pid"), format!("{pid}\n"))
        .context("write the traffic pid file")?;
    Ok(pid)
}

/// `dev traffic`: sends `+1` to `args.to` at `args.rate` per second and logs, every 5 s, what
/// was sent and the last count the ACTIVE replied with (a count that goes back would be a lost
/// commit; it is logged loudly). Stops after `args.duration_s`.
pub fn traffic(args: &DevTrafficArgs) -> anyhow::Result<()> {
    let socket =
        std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("bind a UDP socket")?;
    socket.set_nonblocking(true)?;
    let interval = Duration::from_micros(1_000_000 / u64::from(args.rate.max(1)));
    let started = Instant::now();
    let end = started + Duration::from_secs(args.duration_s);
    let mut next_send = started;
    let mut next_log = started + Duration::from_secs(5);
    let (mut sent, mut replies, mut last_count, mut went_back) = (0u64, 0u64, 0u64, 0u64);
    let mut buffer = [0u8; 256];
    println!(
        "{} traffic to {}: {} messages/s",
        crate::render::utc(wall_ms()),
        args.to,
        args.rate
    );
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_send {
            if socket.send_to(b"+1", args.to).is_ok() {
                sent += 1;
            }
            next_send += interval;
        }
        while let Ok((len, _)) = socket.recv_from(&mut buffer) {
            replies += 1;
            let text = String::from_utf8_lossy(&buffer[..len]);
            if let Some(count) = text
                .strip_prefix("count=")
                .and_then(|n| n.trim().parse::<u64>().ok())
            {
                if count < last_count {
                    went_back += 1;
                    println!(
                        "{} COUNT WENT BACK from {last_count} to {count}",
                        crate::render::utc(wall_ms())
                    );
                }
                last_count = last_count.max(count);
            }
        }
        if now >= next_log {
            println!(
                "{} sent {sent}, replies {replies}, count {last_count}, went back {went_back}",
                crate::render::utc(wall_ms())
            );
            next_log += Duration::from_secs(5);
        }
        std::thread::sleep(
            Duration::from_millis(1).min(next_send.saturating_duration_since(Instant::now())),
        );
    }
    Ok(())
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_scheme() {
        let (peer, admin) = dev_addresses(7100, 1).unwrap();
        assert_eq!(peer, "127.0.0.1:7101".parse().unwrap());
        assert_eq!(admin, "127.0.0.1:7201".parse().unwrap());
        let (peer, admin) = dev_addresses(7100, 7).unwrap();
        assert_eq!(peer.port(), 7107);
        assert_eq!(admin.port(), 7207);
        assert!(dev_addresses(65430, 7).is_err());
    }

    #[test]
    fn dev_config_round_trips_through_the_file() {
        for nodes in 1..=7 {
            let dir = Path::new("/tmp/tandem-dev");
            let config = dev_config(
                nodes,
                7100,
                dir,
                Some(DevApp::Counter(Path::new("/opt/tandem/counter"))),
            )
            .unwrap();
            assert_eq!(config.topology.services.len(), 1);
            assert_eq!(config.cluster.name, "dev");
            assert_eq!(config.cluster.data_dir, dir.join("data"));
            assert_eq!(config.nodes.len(), usize::from(nodes));
            assert_eq!(config.nodes[0].name, "n1");
            let text = config.to_toml();
            assert!(text.contains("data_dir = \"data\""), "{text}");
            assert_eq!(Config::parse(&text, &config.path).unwrap(), config);
        }
    }

    #[test]
    fn pid_files_are_read_and_bad_ones_have_no_pid() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("n2.pid"), "4242\n").unwrap();
        fs::write(dir.path().join("n1.pid"), "garbage").unwrap();
        fs::write(dir.path().join("n3.pid"), "-1").unwrap();
        fs::write(dir.path().join("notes.txt"), "1234").unwrap();
        let files = read_pid_files(dir.path()).unwrap();
        let seen: Vec<(&str, Option<libc::pid_t>)> = files
            .iter()
            .map(|file| (file.node.as_str(), file.pid))
            .collect();
        assert_eq!(seen, vec![("n1", None), ("n2", Some(4242)), ("n3", None)]);
        assert!(read_pid_files(&dir.path().join("missing"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn liveness_of_a_child() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        assert!(is_alive(pid));
        signal(pid, libc::SIGTERM).unwrap();
        child.wait().unwrap();
        assert!(!is_alive(pid));
        // Signalling a process that is gone is not an error.
        signal(pid, libc::SIGTERM).unwrap();
    }

    #[test]
    fn down_with_nothing_running_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("pids")).unwrap();
        // A pid file whose process is long gone (pid_max is far below this on Linux).
        fs::write(dir.path().join("pids/n1.pid"), "999999999\n").unwrap();
        down(&DevDownArgs {
            dir: dir.path().to_path_buf(),
        })
        .unwrap();
        assert!(!dir.path().join("pids/n1.pid").exists());
        // And with no pid directory at all.
        down(&DevDownArgs {
            dir: dir.path().join("never-used"),
        })
        .unwrap();
    }

    #[test]
    fn log_tail_shows_only_this_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n1.log");
        fs::write(&path, "old run\n").unwrap();
        let start = fs::metadata(&path).unwrap().len();
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        for line in 1..=30 {
            writeln!(file, "line {line}").unwrap();
        }
        let tail = log_tail(&path, start, 20);
        assert!(tail.starts_with("line 11\n"), "{tail}");
        assert!(tail.ends_with("line 30\n"));
        assert_eq!(
            log_tail(&path, fs::metadata(&path).unwrap().len(), 20),
            "(the log is empty)\n"
        );
    }

    #[test]
    fn progress_messages() {
        let mut progress = Progress {
            answered: vec![],
            silent: vec!["n1".into(), "n2".into()],
            leader: None,
            unassigned: vec!["counter-0".into()],
            unprotected: vec![],
        };
        assert_eq!(progress.describe(), "waiting for the daemons to listen...");
        progress.answered.push(progress.silent.remove(0));
        assert_eq!(
            progress.describe(),
            "waiting for a leader... (1 of 2 nodes answer)"
        );
        progress.leader = Some("n1".into());
        assert_eq!(
            progress.describe(),
            "leader n1; waiting for n2 to answer..."
        );
        assert!(!progress.done());
        progress.answered.push(progress.silent.remove(0));
        assert_eq!(
            progress.describe(),
            "leader n1; waiting for counter-0 to get an ACTIVE unit..."
        );
        assert!(!progress.done());
        progress.unprotected = progress.unassigned.drain(..).collect();
        assert_eq!(
            progress.describe(),
            "leader n1; waiting for counter-0 to get a STANDBY in sync..."
        );
        assert!(!progress.done());
        progress.unprotected.clear();
        assert!(progress.done());
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote(".tandem"), ".tandem");
        assert_eq!(shell_quote("/tmp/dev test"), "'/tmp/dev test'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
