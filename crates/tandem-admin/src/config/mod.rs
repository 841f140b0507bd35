//! The cluster configuration: one TOML file shared by every daemon and by `tandemctl`.
//!
//! ```toml
//! [cluster]
//! name = "demo"
//! data_dir = "/var/lib/tandem"   # each node uses <data_dir>/<node name>
//! heartbeat_interval_ms = 50
//! node_timeout_ms = 300
//!
//! [[nodes]]
//! name = "n1"
//! peer_addr = "127.0.0.1:7101"
//! admin_addr = "127.0.0.1:7201"
//! ```
//!
//! Only `cluster.name`, `cluster.data_dir` and the nodes are required; every other
//! `[cluster]` key has a default (see the `DEFAULT_*` constants). The file is read in two
//! steps: serde turns the text into raw structs that keep the byte span of every value, and
//! [`Config::parse`] then checks the values and resolves defaults. Because the spans survive,
//! every error names the file, the line and the key, e.g.
//! `tandem.toml:7: nodes[1].peer_addr: "127.0.0.1:99999" is not a socket address (expected IP:PORT)`.
//! Node indices in keys count from 0, as in the TOML array; node ids count from 1.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tandem_core::{ProcessSpec, Topology};
use toml::Spanned;

mod services;

/// Default agent-to-leader heartbeat period.
pub const DEFAULT_HEARTBEAT_INTERVAL_MS: u64 = 50;
/// Default silence after which a node is declared down.
pub const DEFAULT_NODE_TIMEOUT_MS: u64 = 300;
/// Default length of one Raft logical tick.
pub const DEFAULT_RAFT_TICK_MS: u64 = 10;
/// Default number of ticks between leader heartbeats.
pub const DEFAULT_RAFT_HEARTBEAT_TICKS: usize = 5;
/// Default minimum election timeout in ticks (randomized in `[n, 2n)`).
pub const DEFAULT_RAFT_ELECTION_TICKS: usize = 10;
/// Default number of applied entries between snapshots.
pub const DEFAULT_SNAPSHOT_INTERVAL_ENTRIES: u64 = 10_000;
/// Default largest peer/admin frame (4 MiB).
pub const DEFAULT_FRAME_LEN_MAX: usize = 4 * 1024 * 1024;
/// Default time an admin request may wait for the leader or a commit.
pub const DEFAULT_ADMIN_TIMEOUT_MS: u64 = 2000;
/// Default agent lease: a node's units stop acting this long after its last heartbeat the
/// leader answered.
pub const DEFAULT_LEASE_MS: u64 = 200;
/// Default shortest time between two msync rounds of the replica files: under load, one
/// msync per file covers every write of the last 2 ms (a STANDBY's answer to a sync commit
/// never waits for it; only a commit with no STANDBY in sync does).
pub const DEFAULT_REPLICA_SYNC_INTERVAL_US: u64 = 2000;
/// Longest accepted `replica_sync_interval_us` (1 s).
pub const REPLICA_SYNC_INTERVAL_US_MAX: u64 = 1_000_000;
/// Default spacing of the msync rounds while every commit on the node waits for an in-sync
/// STANDBY (which holds each write before it is acknowledged) rather than for the disk: 20 ms.
/// Measured on the development VM (4 alternating pairs of runs), going from 2 ms to 20 ms here
/// cut a sync commit's p50 by about 10 % and an async one's by about 15 %, and raised 256-deep
/// throughput by about 20 %: each msync round costs CPU and disk notifications that the
/// commits' own processes compete with.
pub const DEFAULT_REPLICA_SYNC_INTERVAL_IN_SYNC_US: u64 = 20_000;
/// Longest accepted `idle_poll_us` (the idle poller's own bound, here for the tools that
/// check the value before it reaches a config).
pub use tandem_io::idle_poll::IDLE_POLL_US_MAX;
/// Default idle polling window of the daemon's event loop: 200 µs (see
/// [`tandem_io::idle_poll`]), the default of Linux's own guest halt polling. On a virtual
/// machine that halts idle vCPUs without polling, every hop of a commit that finds its
/// receiver asleep costs a wake-up through the hypervisor (75 µs per cross-CPU round trip on
/// the 2-vCPU development VM, 5.5 µs with this window); there it took a sync 128 B commit's
/// p50 from 118-161 µs to 32-74 µs (4 alternating pairs of runs). The window adapts, so an
/// idle daemon hardly polls: under the counter example's traffic a daemon used 3.8 % of a
/// CPU instead of 3.2 %.
pub const DEFAULT_IDLE_POLL_US: u64 = 200;
/// Default idle polling window of the units (their `TANDEM_IDLE_POLL_US`): off, whatever the
/// daemon's. On the 2-vCPU development VM, with the daemons polling 200 µs, units that also
/// polled made sync commits slower (92-102 µs p50 against 80-87 µs with only the daemons
/// polling, 6 alternating runs each) and async ones slower still (74-109 against 48-61 µs):
/// a unit's spinning thread takes CPU time from the daemons its commits go through.
pub const DEFAULT_UNIT_IDLE_POLL_US: u64 = 0;
/// Smallest accepted `frame_len_max` (64 KiB): below it a snapshot chunk or status reply may
/// not fit.
pub const FRAME_LEN_MAX_MIN: usize = 64 * 1024;
/// Largest accepted `frame_len_max` (256 MiB): a bound on what one connection may make a
/// daemon buffer.
pub const FRAME_LEN_MAX_MAX: usize = 256 * 1024 * 1024;

/// A validated cluster configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file this configuration came from (as given, not canonicalized).
    pub path: PathBuf,
    /// Cluster-wide settings from `[cluster]`, defaults applied.
    pub cluster: ClusterConfig,
    /// The nodes from `[[nodes]]`, in file order; never empty.
    pub nodes: Vec<NodeConfig>,
    /// The services from `[[services]]` (node names resolved to ids), plus node ranks and the
    /// node-restart command.
    pub topology: Topology,
}

/// Cluster-wide settings (`[cluster]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Cluster name, shown by `tandemctl status`; never empty.
    pub name: String,
    /// Root of the nodes' data directories, already resolved against the config file's
    /// directory when the file gave a relative path.
    pub data_dir: PathBuf,
    /// Period of the agent-to-leader heartbeat.
    pub heartbeat_interval_ms: u64,
    /// A node silent this long is declared down; greater than `heartbeat_interval_ms`.
    pub node_timeout_ms: u64,
    /// Length of one Raft logical tick.
    pub raft_tick_ms: u64,
    /// The leader sends a Raft heartbeat (a quorum confirmation) at least every this many ticks.
    pub raft_heartbeat_ticks: usize,
    /// Minimum election timeout in ticks (randomized in `[n, 2n)`); greater than
    /// `raft_heartbeat_ticks`.
    pub raft_election_ticks: usize,
    /// Snapshot and compact the Raft log after this many applied entries.
    pub snapshot_interval_entries: u64,
    /// Largest peer or admin frame payload in bytes, within
    /// [`FRAME_LEN_MAX_MIN`]..=[`FRAME_LEN_MAX_MAX`].
    pub frame_len_max: usize,
    /// How long an admin request may wait for the leader or for a commit.
    pub admin_timeout_ms: u64,
    /// Number of voters, resolved: the first `voters` nodes vote, the rest are learners.
    /// Between 1 and the node count.
    pub voters: usize,
    /// An agent's lease: its units may act ACTIVE only this long after their node's last
    /// answered heartbeat. Checked against the heartbeat and node timeout (see
    /// `tandem_core::check_fencing_timers`).
    pub lease_ms: u64,
    /// Shortest time between two msync rounds of the replica files (a group commit); 0 syncs
    /// each batch of writes at once. At most [`REPLICA_SYNC_INTERVAL_US_MAX`].
    pub replica_sync_interval_us: u64,
    /// Shortest time between two msync rounds while no commit on the node waits for the disk
    /// (every primary here has a STANDBY in step or in sync); never less than
    /// `replica_sync_interval_us`. At most [`REPLICA_SYNC_INTERVAL_US_MAX`].
    pub replica_sync_interval_in_sync_us: u64,
    /// How long the event loop's thread polls for work before it sleeps (see
    /// [`tandem_io::idle_poll`]; [`DEFAULT_IDLE_POLL_US`] when left out); 0 turns idle
    /// polling off. At most [`tandem_io::idle_poll::IDLE_POLL_US_MAX`].
    pub idle_poll_us: u64,
    /// The idle polling window the node's units get (`TANDEM_IDLE_POLL_US`, which the SDK's
    /// `tandem::runtime` applies; a service's `env` may set its own); 0 turns it off. At most
    /// [`tandem_io::idle_poll::IDLE_POLL_US_MAX`].
    pub unit_idle_poll_us: u64,
    /// Optional command an agent runs for an L3 node restart (e.g. a VM reboot).
    pub node_restart: Option<Vec<String>>,
}

/// One node (`[[nodes]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    /// Unique name made of `[A-Za-z0-9_.-]`; also the node's data directory name.
    pub name: String,
    /// Raft id: the node's 1-based position in `[[nodes]]`.
    pub id: u64,
    /// Address other daemons reach this node's peer endpoint at (loopback for now).
    pub peer_addr: SocketAddr,
    /// Address `tandemctl` reaches this node's admin endpoint at (loopback for now).
    pub admin_addr: SocketAddr,
    /// Placement preference: lower ranks are preferred (ties: config order).
    pub rank: u32,
}

/// Why a configuration could not be loaded. The message always names the file, and the line
/// and key where they are known.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read config: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid TOML or does not have the expected shape (unknown key, missing
    /// key, wrong type).
    #[error("{}: {message}", location(.path, *.line, .key))]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending text, when known.
        line: Option<usize>,
        /// Dotted key of the offending value or table, when known (e.g. `nodes[1]`).
        key: Option<String>,
        /// What is wrong, from the TOML parser.
        message: String,
    },
    /// The file parsed, but a value is not acceptable.
    #[error("{}: {message}", location(.path, *.line, &Some(.key.clone())))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the offending value, when known (a defaulted value has none; the
        /// line of its table is used when there is one).
        line: Option<usize>,
        /// Dotted key of the offending value, e.g. `nodes[1].peer_addr`.
        key: String,
        /// What is wrong and what is expected.
        message: String,
    },
}

impl ConfigError {
    /// The 1-based line the error points at, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { line, .. } | ConfigError::Invalid { line, .. } => *line,
        }
    }
}

/// Formats `file:line: key` with the parts that are known.
fn location(path: &Path, line: Option<usize>, key: &Option<String>) -> String {
    let mut out = path.display().to_string();
    if let Some(line) = line {
        out.push_str(&format!(":{line}"));
    }
    if let Some(key) = key {
        out.push_str(&format!(": {key}"));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Raw, span-carrying shape of the file. Every scalar is `Spanned` so that validation can point
// at its line.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    cluster: Spanned<RawCluster>,
    #[serde(default)]
    nodes: Vec<Spanned<RawNode>>,
    #[serde(default)]
    services: Vec<Spanned<services::RawService>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    name: Spanned<String>,
    data_dir: Spanned<PathBuf>,
    heartbeat_interval_ms: Option<Spanned<u64>>,
    node_timeout_ms: Option<Spanned<u64>>,
    raft_tick_ms: Option<Spanned<u64>>,
    raft_heartbeat_ticks: Option<Spanned<usize>>,
    raft_election_ticks: Option<Spanned<usize>>,
    snapshot_interval_entries: Option<Spanned<u64>>,
    frame_len_max: Option<Spanned<usize>>,
    admin_timeout_ms: Option<Spanned<u64>>,
    voters: Option<Spanned<usize>>,
    lease_ms: Option<Spanned<u64>>,
    replica_sync_interval_us: Option<Spanned<u64>>,
    replica_sync_interval_in_sync_us: Option<Spanned<u64>>,
    idle_poll_us: Option<Spanned<u64>>,
    unit_idle_poll_us: Option<Spanned<u64>>,
    node_restart: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Spanned<String>,
    // Addresses are read as strings so that a bad one gets our message, not serde's.
    peer_addr: Spanned<String>,
    admin_addr: Spanned<String>,
    rank: Option<u32>,
}

// Output shape for `to_toml`: every key written out, so the file documents the values in force.

#[derive(Serialize)]
struct OutConfig<'a> {
    cluster: OutCluster<'a>,
    nodes: Vec<OutNode<'a>>,
    services: Vec<services::OutService>,
}

#[derive(Serialize)]
struct OutCluster<'a> {
    name: &'a str,
    data_dir: String,
    heartbeat_interval_ms: u64,
    node_timeout_ms: u64,
    raft_tick_ms: u64,
    raft_heartbeat_ticks: usize,
    raft_election_ticks: usize,
    snapshot_interval_entries: u64,
    frame_len_max: usize,
    admin_timeout_ms: u64,
    voters: usize,
    lease_ms: u64,
    replica_sync_interval_us: u64,
    replica_sync_interval_in_sync_us: u64,
    idle_poll_us: u64,
    unit_idle_poll_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_restart: Option<&'a Vec<String>>,
}

#[derive(Serialize)]
struct OutNode<'a> {
    name: &'a str,
    peer_addr: String,
    admin_addr: String,
    rank: u32,
}

// ---------------------------------------------------------------------------------------------

/// Validation context: the text (to turn byte offsets into lines) and the file name.
struct Checker<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Checker<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        1 + self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
    }

    fn invalid(&self, span: Option<Range<usize>>, key: String, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line: span.map(|span| self.line_of(span.start)),
            key,
            message,
        }
    }

    /// Turns a toml error into a [`ConfigError::Syntax`] that points at a line and, when the
    /// text around the error tells, at the table the error is in.
    fn syntax(&self, error: &toml::de::Error) -> ConfigError {
        let span = error.span();
        let line = span.as_ref().map(|span| self.line_of(span.start));
        let mut key = span
            .as_ref()
            .and_then(|span| enclosing_table(self.text, span.start));
        if let (Some(span), Some(table)) = (&span, &key) {
            let offending = self.text.get(span.clone()).unwrap_or("");
            if error.message().starts_with("unknown field") && is_bare_key(offending) {
                // For an unknown key the span covers the key itself.
                key = Some(format!("{table}.{offending}"));
            } else if let Some(name) = key_of_value_at(self.text, span.start) {
                // For a bad value the span covers the value: name the key it is assigned to.
                key = Some(format!("{table}.{name}"));
            }
        }
        ConfigError::Syntax {
            path: self.path.to_path_buf(),
            line,
            key,
            // toml's messages end with a newline and sometimes span lines; keep one line.
            message: error.message().trim().replace('\n', "; "),
        }
    }

    /// Resolves an optional `[cluster]` value: the given one with its span, or the default
    /// with the `[cluster]` table's span (so errors about it still point somewhere useful).
    fn value_or<T: Copy>(
        option: &Option<Spanned<T>>,
        default: T,
        table: &Range<usize>,
    ) -> (T, Range<usize>) {
        match option {
            Some(value) => (*value.get_ref(), value.span()),
            None => (default, table.clone()),
        }
    }

    /// The value of `key` (`default` when left out), refused above `max` with a message
    /// that says what `consequence` a longer one would have.
    fn at_most(
        &self,
        option: &Option<Spanned<u64>>,
        default: u64,
        max: u64,
        table: &Range<usize>,
        key: &str,
        consequence: &str,
    ) -> Result<u64, ConfigError> {
        let (value, span) = Self::value_or(option, default, table);
        if value > max {
            return Err(self.invalid(
                Some(span),
                key.into(),
                format!("{value} is too long (at most {max}): {consequence}"),
            ));
        }
        Ok(value)
    }
}

/// Best effort: the dotted path of the TOML table that contains byte `offset`, found by
/// scanning `[table]` and `[[array]]` headers before it (`nodes[2]` for the third
/// `[[nodes]]`). Returns `None` outside any table or when the header is unusual.
fn enclosing_table(text: &str, offset: usize) -> Option<String> {
    let mut current: Option<String> = None;
    let mut array_counts: HashMap<String, usize> = HashMap::new();
    let mut line_start = 0usize;
    for line in text.split_inclusive('\n') {
        if line_start > offset {
            break;
        }
        let trimmed = line.trim();
        if let Some(rest) = trimmed.strip_prefix("[[") {
            let name = rest.split("]]").next().unwrap_or("").trim().to_string();
            let count = array_counts.entry(name.clone()).or_insert(0);
            current = Some(format!("{name}[{count}]"));
            *count += 1;
        } else if let Some(rest) = trimmed.strip_prefix('[') {
            let name = rest.split(']').next().unwrap_or("").trim().to_string();
            current = Some(name);
        }
        line_start += line.len();
    }
    current.filter(|name| !name.is_empty())
}

/// The key of a `key = value` line when byte `offset` lies in its value.
fn key_of_value_at(text: &str, offset: usize) -> Option<&str> {
    let offset = offset.min(text.len());
    let line_start = text.get(..offset)?.rfind('\n').map_or(0, |at| at + 1);
    let line = text.get(line_start..)?.lines().next()?;
    let (name, _) = line.split_once('=')?;
    let equals_at = line_start + name.len();
    let name = name.trim();
    (offset > equals_at && is_bare_key(name)).then_some(name)
}

/// True for a TOML bare key (`[A-Za-z0-9_-]+`).
fn is_bare_key(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn is_valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
}

/// The number of voters when the file does not say: 5 for five nodes or more, else up to 3.
/// More voters make every commit slower, and five tolerate two failures, which is enough.
pub fn default_voters(node_count: usize) -> usize {
    if node_count >= 5 {
        5
    } else {
        node_count.min(3)
    }
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text`. `path` names the file in error messages, and a relative
    /// `data_dir` is resolved against its directory.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let checker = Checker { text, path };
        let raw: RawConfig = toml::from_str(text).map_err(|error| checker.syntax(&error))?;
        let cluster_span = raw.cluster.span();
        let raw_cluster = raw.cluster.into_inner();

        let name = raw_cluster.name.get_ref().clone();
        if name.trim().is_empty() {
            return Err(checker.invalid(
                Some(raw_cluster.name.span()),
                "cluster.name".into(),
                "must not be empty".into(),
            ));
        }

        let data_dir_raw = raw_cluster.data_dir.get_ref();
        if data_dir_raw.as_os_str().is_empty() {
            return Err(checker.invalid(
                Some(raw_cluster.data_dir.span()),
                "cluster.data_dir".into(),
                "must not be empty".into(),
            ));
        }
        let data_dir = if data_dir_raw.is_absolute() {
            data_dir_raw.clone()
        } else {
            // Relative to the config file, not to whatever directory the daemon started in,
            // so that every node reading the same file agrees on the place.
            path.parent()
                .unwrap_or_else(|| Path::new(""))
                .join(data_dir_raw)
        };

        let (heartbeat_interval_ms, heartbeat_span) = Checker::value_or(
            &raw_cluster.heartbeat_interval_ms,
            DEFAULT_HEARTBEAT_INTERVAL_MS,
            &cluster_span,
        );
        let (node_timeout_ms, node_timeout_span) = Checker::value_or(
            &raw_cluster.node_timeout_ms,
            DEFAULT_NODE_TIMEOUT_MS,
            &cluster_span,
        );
        let (raft_tick_ms, raft_tick_span) = Checker::value_or(
            &raw_cluster.raft_tick_ms,
            DEFAULT_RAFT_TICK_MS,
            &cluster_span,
        );
        let (raft_heartbeat_ticks, raft_heartbeat_span) = Checker::value_or(
            &raw_cluster.raft_heartbeat_ticks,
            DEFAULT_RAFT_HEARTBEAT_TICKS,
            &cluster_span,
        );
        let (raft_election_ticks, raft_election_span) = Checker::value_or(
            &raw_cluster.raft_election_ticks,
            DEFAULT_RAFT_ELECTION_TICKS,
            &cluster_span,
        );
        let (snapshot_interval_entries, snapshot_span) = Checker::value_or(
            &raw_cluster.snapshot_interval_entries,
            DEFAULT_SNAPSHOT_INTERVAL_ENTRIES,
            &cluster_span,
        );
        let (frame_len_max, frame_span) = Checker::value_or(
            &raw_cluster.frame_len_max,
            DEFAULT_FRAME_LEN_MAX,
            &cluster_span,
        );
        let (admin_timeout_ms, admin_timeout_span) = Checker::value_or(
            &raw_cluster.admin_timeout_ms,
            DEFAULT_ADMIN_TIMEOUT_MS,
            &cluster_span,
        );
        let (lease_ms, lease_span) =
            Checker::value_or(&raw_cluster.lease_ms, DEFAULT_LEASE_MS, &cluster_span);
        let replica_sync_interval_us = checker.at_most(
            &raw_cluster.replica_sync_interval_us,
            DEFAULT_REPLICA_SYNC_INTERVAL_US,
            REPLICA_SYNC_INTERVAL_US_MAX,
            &cluster_span,
            "cluster.replica_sync_interval_us",
            "writes would wait that long for the disk",
        )?;
        let replica_sync_interval_in_sync_us = match &raw_cluster.replica_sync_interval_in_sync_us {
            None => DEFAULT_REPLICA_SYNC_INTERVAL_IN_SYNC_US.max(replica_sync_interval_us),
            Some(set) => {
                let value = *set.get_ref();
                let problem = if value > REPLICA_SYNC_INTERVAL_US_MAX {
                    Some(format!(
                        "{value} is too long (at most {REPLICA_SYNC_INTERVAL_US_MAX}): a \
                             crash of every replica's node could lose that much"
                    ))
                } else if value < replica_sync_interval_us {
                    Some(format!(
                        "{value} is shorter than cluster.replica_sync_interval_us \
                             ({replica_sync_interval_us}); it must be at least that"
                    ))
                } else {
                    None
                };
                if let Some(problem) = problem {
                    return Err(checker.invalid(
                        Some(set.span()),
                        "cluster.replica_sync_interval_in_sync_us".into(),
                        problem,
                    ));
                }
                value
            }
        };
        let idle_poll_us = checker.at_most(
            &raw_cluster.idle_poll_us,
            DEFAULT_IDLE_POLL_US,
            IDLE_POLL_US_MAX,
            &cluster_span,
            "cluster.idle_poll_us",
            "the event loop would keep its CPU busy nearly all the time and its timers late",
        )?;
        let unit_idle_poll_us = checker.at_most(
            &raw_cluster.unit_idle_poll_us,
            DEFAULT_UNIT_IDLE_POLL_US,
            IDLE_POLL_US_MAX,
            &cluster_span,
            "cluster.unit_idle_poll_us",
            "each unit would keep its CPU busy nearly all the time and its timers late",
        )?;

        let positive = [
            (
                "heartbeat_interval_ms",
                heartbeat_interval_ms,
                &heartbeat_span,
            ),
            ("node_timeout_ms", node_timeout_ms, &node_timeout_span),
            ("raft_tick_ms", raft_tick_ms, &raft_tick_span),
            (
                "raft_heartbeat_ticks",
                raft_heartbeat_ticks as u64,
                &raft_heartbeat_span,
            ),
            (
                "raft_election_ticks",
                raft_election_ticks as u64,
                &raft_election_span,
            ),
            (
                "snapshot_interval_entries",
                snapshot_interval_entries,
                &snapshot_span,
            ),
            ("admin_timeout_ms", admin_timeout_ms, &admin_timeout_span),
            ("lease_ms", lease_ms, &lease_span),
        ];
        for (key, value, span) in positive {
            if value == 0 {
                return Err(checker.invalid(
                    Some(span.clone()),
                    format!("cluster.{key}"),
                    "must be greater than 0".into(),
                ));
            }
        }
        if raft_tick_ms > heartbeat_interval_ms {
            // The leader asks its quorum to confirm it, and sends the lease grants that wait
            // for an ask, on ticks: at least once a heartbeat interval only if a tick fits in one.
            let (span, key) = if raw_cluster.raft_tick_ms.is_some() {
                (raft_tick_span, "cluster.raft_tick_ms")
            } else {
                (heartbeat_span, "cluster.heartbeat_interval_ms")
            };
            return Err(checker.invalid(
                Some(span),
                key.into(),
                format!(
                    "raft_tick_ms ({raft_tick_ms}) must not exceed heartbeat_interval_ms \
                     ({heartbeat_interval_ms}): the leader confirms its leadership and renews \
                     leases on Raft ticks, at least once a heartbeat interval"
                ),
            ));
        }
        if node_timeout_ms <= heartbeat_interval_ms && raw_cluster.node_timeout_ms.is_none() {
            // Only the heartbeat was set: point at the value the operator wrote.
            return Err(checker.invalid(
                Some(heartbeat_span),
                "cluster.heartbeat_interval_ms".into(),
                format!(
                    "{heartbeat_interval_ms} must be less than node_timeout_ms \
                     ({node_timeout_ms}, the default), or every node would be declared down \
                     between two heartbeats"
                ),
            ));
        }
        if node_timeout_ms <= heartbeat_interval_ms {
            return Err(checker.invalid(
                Some(node_timeout_span),
                "cluster.node_timeout_ms".into(),
                format!(
                    "{node_timeout_ms} must be greater than heartbeat_interval_ms \
                     ({heartbeat_interval_ms}), or every node would be declared down between \
                     two heartbeats"
                ),
            ));
        }
        if raft_election_ticks <= raft_heartbeat_ticks && raw_cluster.raft_election_ticks.is_none()
        {
            return Err(checker.invalid(
                Some(raft_heartbeat_span),
                "cluster.raft_heartbeat_ticks".into(),
                format!(
                    "{raft_heartbeat_ticks} must be less than raft_election_ticks \
                     ({raft_election_ticks}, the default), or followers would start elections \
                     against a healthy leader"
                ),
            ));
        }
        if raft_election_ticks <= raft_heartbeat_ticks {
            return Err(checker.invalid(
                Some(raft_election_span),
                "cluster.raft_election_ticks".into(),
                format!(
                    "{raft_election_ticks} must be greater than raft_heartbeat_ticks \
                     ({raft_heartbeat_ticks}), or followers would start elections against a \
                     healthy leader"
                ),
            ));
        }
        if let Err(reason) = tandem_core::check_fencing_timers(
            std::time::Duration::from_millis(heartbeat_interval_ms),
            std::time::Duration::from_millis(lease_ms),
            std::time::Duration::from_millis(node_timeout_ms),
        ) {
            let (key, span) = if raw_cluster.lease_ms.is_some() {
                ("cluster.lease_ms", lease_span)
            } else if raw_cluster.node_timeout_ms.is_some() {
                ("cluster.node_timeout_ms", node_timeout_span)
            } else {
                ("cluster.heartbeat_interval_ms", heartbeat_span.clone())
            };
            return Err(checker.invalid(Some(span), key.into(), reason));
        }
        if raw_cluster
            .node_restart
            .as_ref()
            .is_some_and(|argv| argv.is_empty())
        {
            return Err(checker.invalid(
                Some(cluster_span.clone()),
                "cluster.node_restart".into(),
                "must name a program to run (or leave the key out)".into(),
            ));
        }
        if !(FRAME_LEN_MAX_MIN..=FRAME_LEN_MAX_MAX).contains(&frame_len_max) {
            return Err(checker.invalid(
                Some(frame_span),
                "cluster.frame_len_max".into(),
                format!(
                    "{frame_len_max} is out of range (expected {FRAME_LEN_MAX_MIN} to \
                     {FRAME_LEN_MAX_MAX} bytes, i.e. 64 KiB to 256 MiB)"
                ),
            ));
        }

        if raw.nodes.is_empty() {
            return Err(checker.invalid(
                None,
                "nodes".into(),
                "no [[nodes]] given; a cluster needs at least one node".into(),
            ));
        }

        let mut nodes = Vec::with_capacity(raw.nodes.len());
        let mut names: HashMap<String, usize> = HashMap::new();
        // Every address, peer or admin, belongs to exactly one endpoint of one node.
        let mut addresses: HashMap<SocketAddr, String> = HashMap::new();
        for (index, raw_node) in raw.nodes.iter().enumerate() {
            let raw_node = raw_node.get_ref();
            let name = raw_node.name.get_ref();
            let name_key = format!("nodes[{index}].name");
            if !is_valid_node_name(name) {
                return Err(checker.invalid(
                    Some(raw_node.name.span()),
                    name_key,
                    format!(
                        "{name:?} is not a valid node name (use letters, digits, '_', '.' and \
                         '-'; it names the node's data directory)"
                    ),
                ));
            }
            if let Some(first) = names.insert(name.clone(), index) {
                return Err(checker.invalid(
                    Some(raw_node.name.span()),
                    name_key,
                    format!("{name:?} is already the name of nodes[{first}]; names must be unique"),
                ));
            }
            let mut parse_addr = |field: &str, value: &Spanned<String>| {
                let key = format!("nodes[{index}].{field}");
                let text = value.get_ref();
                let addr: SocketAddr = text.trim().parse().map_err(|_| {
                    checker.invalid(
                        Some(value.span()),
                        key.clone(),
                        format!("{text:?} is not a socket address (expected IP:PORT)"),
                    )
                })?;
                if !addr.ip().is_loopback() {
                    return Err(checker.invalid(
                        Some(value.span()),
                        key,
                        format!(
                            "{addr} is not a loopback address; tandem serves loopback only \
                             until TLS is configured (not supported yet)"
                        ),
                    ));
                }
                if addr.port() == 0 {
                    return Err(checker.invalid(
                        Some(value.span()),
                        key,
                        format!("{addr} has port 0; other nodes and tandemctl need a fixed port"),
                    ));
                }
                if let Some(owner) = addresses.insert(addr, key.clone()) {
                    return Err(checker.invalid(
                        Some(value.span()),
                        key,
                        format!("{addr} is already used by {owner}; every address must be unique"),
                    ));
                }
                Ok(addr)
            };
            let peer_addr = parse_addr("peer_addr", &raw_node.peer_addr)?;
            let admin_addr = parse_addr("admin_addr", &raw_node.admin_addr)?;
            nodes.push(NodeConfig {
                name: name.clone(),
                id: index as u64 + 1,
                peer_addr,
                admin_addr,
                rank: raw_node.rank.unwrap_or(0),
            });
        }

        let voters = match &raw_cluster.voters {
            None => default_voters(nodes.len()),
            Some(voters) => {
                let count = *voters.get_ref();
                if count == 0 || count > nodes.len() {
                    return Err(checker.invalid(
                        Some(voters.span()),
                        "cluster.voters".into(),
                        format!(
                            "{count} is out of range (expected 1 to {}, the number of nodes)",
                            nodes.len()
                        ),
                    ));
                }
                count
            }
        };

        let node_restart = raw_cluster.node_restart.clone();
        let topology = services::parse_services(
            &checker,
            raw.services,
            &nodes,
            node_restart.as_ref().map(|argv| ProcessSpec {
                argv: argv.clone(),
                ..ProcessSpec::default()
            }),
        )?;
        check_topology_size(&checker, &topology, frame_len_max)?;

        Ok(Config {
            path: path.to_path_buf(),
            topology,
            cluster: ClusterConfig {
                name,
                data_dir,
                heartbeat_interval_ms,
                node_timeout_ms,
                raft_tick_ms,
                raft_heartbeat_ticks,
                raft_election_ticks,
                snapshot_interval_entries,
                frame_len_max,
                admin_timeout_ms,
                voters,
                lease_ms,
                replica_sync_interval_us,
                replica_sync_interval_in_sync_us,
                idle_poll_us,
                unit_idle_poll_us,
                node_restart,
            },
            nodes,
        })
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|node| node.name == name)
    }

    /// The node with Raft id `id`.
    pub fn node_by_id(&self, id: u64) -> Option<&NodeConfig> {
        self.nodes.iter().find(|node| node.id == id)
    }

    /// Ids of the voters: the first `cluster.voters` nodes.
    pub fn voter_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .take(self.cluster.voters)
            .map(|node| node.id)
            .collect()
    }

    /// Ids of the learners: every node after the voters.
    pub fn learner_ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .skip(self.cluster.voters)
            .map(|node| node.id)
            .collect()
    }

    /// The data directory of node `name`: `<data_dir>/<name>`.
    pub fn node_data_dir(&self, name: &str) -> PathBuf {
        self.cluster.data_dir.join(name)
    }

    /// Writes this configuration as TOML, every key explicit, such that
    /// `Config::parse(&config.to_toml(), &config.path)` gives back an equal `Config`.
    ///
    /// `data_dir` is written relative to the config file's directory when it lies under it
    /// (so that a directory written by `tandemctl dev up` can be moved or copied), else as an
    /// absolute path.
    pub fn to_toml(&self) -> String {
        let out = OutConfig {
            cluster: OutCluster {
                name: &self.cluster.name,
                data_dir: self.data_dir_for_file().display().to_string(),
                heartbeat_interval_ms: self.cluster.heartbeat_interval_ms,
                node_timeout_ms: self.cluster.node_timeout_ms,
                raft_tick_ms: self.cluster.raft_tick_ms,
                raft_heartbeat_ticks: self.cluster.raft_heartbeat_ticks,
                raft_election_ticks: self.cluster.raft_election_ticks,
                snapshot_interval_entries: self.cluster.snapshot_interval_entries,
                frame_len_max: self.cluster.frame_len_max,
                admin_timeout_ms: self.cluster.admin_timeout_ms,
                voters: self.cluster.voters,
                lease_ms: self.cluster.lease_ms,
                replica_sync_interval_us: self.cluster.replica_sync_interval_us,
                replica_sync_interval_in_sync_us: self.cluster.replica_sync_interval_in_sync_us,
                idle_poll_us: self.cluster.idle_poll_us,
                unit_idle_poll_us: self.cluster.unit_idle_poll_us,
                node_restart: self.cluster.node_restart.as_ref(),
            },
            nodes: self
                .nodes
                .iter()
                .map(|node| OutNode {
                    name: &node.name,
                    peer_addr: node.peer_addr.to_string(),
                    admin_addr: node.admin_addr.to_string(),
                    rank: node.rank,
                })
                .collect(),
            services: services::out_services(&self.topology, &self.nodes),
        };
        // Serializing plain strings and integers into TOML cannot fail; a failure would be a
        // bug in this function's output types.
        let body = toml::to_string(&out).expect("config output types serialize to TOML");
        format!(
            "# tandem cluster configuration (written by tandem; see tandem_admin::config)\n{body}"
        )
    }

    /// `data_dir` as it must appear in the file so that parsing resolves it back to itself:
    /// relative to the file's directory when it lies under it, else absolute.
    fn data_dir_for_file(&self) -> PathBuf {
        let data_dir = &self.cluster.data_dir;
        let base = self.path.parent().unwrap_or_else(|| Path::new(""));
        // Joining `relative` back onto `base` (what `parse` does) gives `data_dir` again.
        if base.is_absolute() == data_dir.is_absolute() {
            if let Ok(relative) = data_dir.strip_prefix(base) {
                if !relative.as_os_str().is_empty() {
                    return relative.to_path_buf();
                }
            }
        }
        if data_dir.is_absolute() {
            return data_dir.clone();
        }
        // A relative path not under the file's directory: only an absolute one means the
        // same thing to a reader of the file.
        std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.clone())
    }
}

impl fmt::Display for NodeConfig {
    /// `name (id N)`, for log lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (id {})", self.name, self.id)
    }
}

/// Most shards a config may declare in all its services: ten times what the benchmark runs
/// on 16 daemons (10,000), the most the simulation is built to reach.
pub const TOPOLOGY_SHARDS_MAX: usize = 100_000;

/// Refuses services that the cluster could not carry: more than [`TOPOLOGY_SHARDS_MAX`]
/// shards, or a topology whose Raft entry would not fit in half a peer frame
/// (`frame_len_max`): the leader could never replicate it, and the cluster would run
/// without it, retrying for ever.
fn check_topology_size(
    checker: &Checker<'_>,
    topology: &Topology,
    frame_len_max: usize,
) -> Result<(), ConfigError> {
    let shards: usize = topology
        .services
        .iter()
        .map(|service| service.shards.len())
        .sum();
    if shards > TOPOLOGY_SHARDS_MAX {
        return Err(checker.invalid(
            None,
            "services".into(),
            format!(
                "{shards} shards in all services, more than the {TOPOLOGY_SHARDS_MAX} a cluster \
                 may hold (every node applies and keeps every shard's record)"
            ),
        ));
    }
    let entry = tandem_proto::state_wire::encode_command(&tandem_core::Command::SetTopology(
        topology.clone(),
    ))
    .len();
    let room = frame_len_max / 2;
    if entry > room {
        return Err(checker.invalid(
            None,
            "services".into(),
            format!(
                "the services make a Raft entry of {entry} bytes, more than half a peer frame \
                 ({room} of cluster.frame_len_max = {frame_len_max}): the leader could not \
                 replicate it; raise cluster.frame_len_max or declare fewer shards"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"[cluster]
name = "demo"
data_dir = "/var/lib/tandem"

[[nodes]]
name = "n1"
peer_addr = "127.0.0.1:7101"
admin_addr = "127.0.0.1:7201"

[[nodes]]
name = "n2"
peer_addr = "127.0.0.1:7102"
admin_addr = "127.0.0.1:7202"

[[nodes]]
name = "n3"
peer_addr = "[::1]:7103"
admin_addr = "127.0.0.1:7203"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("tandem.toml"))
    }

    /// Asserts that `text` fails with a message naming the file, `line` and `key`.
    fn assert_error(text: &str, line: usize, key: &str) -> String {
        let error = parse(text).expect_err("config should be refused");
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("tandem.toml:{line}:")),
            "wrong file or line in {message:?} (expected line {line})"
        );
        assert!(message.contains(key), "key {key:?} missing in {message:?}");
        assert!(!message.contains('\n'), "multi-line message {message:?}");
        assert_eq!(error.line(), Some(line));
        message
    }

    /// `EXAMPLE` with one 2n service of `shards` shards, and `cluster` lines added.
    fn with_shards(shards: usize, cluster: &str) -> String {
        let names: Vec<String> = (0..shards).map(|index| format!("\"s-{index}\"")).collect();
        let example = EXAMPLE.replace(
            "data_dir = \"/var/lib/tandem\"\n",
            &format!("data_dir = \"/var/lib/tandem\"\n{cluster}"),
        );
        format!(
            "{example}\n[[services]]\nname = \"s\"\nmodel = \"2n\"\nshards = [{}]\n\
             units = [{{ name = \"a\", node = \"n1\" }}, {{ name = \"b\", node = \"n2\" }}]\n\
             instantiate = [\"/bin/true\"]\n",
            names.join(", ")
        )
    }

    #[test]
    fn too_many_shards_are_refused_with_the_count_and_the_limit() {
        assert!(parse(&with_shards(10_000, "")).is_ok());
        let message = parse(&with_shards(TOPOLOGY_SHARDS_MAX + 1, ""))
            .expect_err("over the limit")
            .to_string();
        assert!(message.contains("100001 shards"), "{message}");
        assert!(message.contains("100000"), "{message}");
    }

    #[test]
    fn a_topology_larger_than_half_a_frame_is_refused_with_its_size() {
        // 10,000 shards make an entry of about 100 KiB: not in half of a 64 KiB frame.
        let text = with_shards(10_000, "frame_len_max = 65536\n");
        let message = parse(&text).expect_err("too big").to_string();
        assert!(message.contains("Raft entry of"), "{message}");
        assert!(message.contains("frame_len_max = 65536"), "{message}");
        assert!(parse(&with_shards(1_000, "frame_len_max = 65536\n")).is_ok());
    }

    #[test]
    fn example_parses_with_defaults() {
        let config = parse(EXAMPLE).unwrap();
        assert_eq!(config.path, Path::new("tandem.toml"));
        assert_eq!(
            config.cluster,
            ClusterConfig {
                name: "demo".into(),
                data_dir: "/var/lib/tandem".into(),
                heartbeat_interval_ms: 50,
                node_timeout_ms: 300,
                raft_tick_ms: 10,
                raft_heartbeat_ticks: 5,
                raft_election_ticks: 10,
                snapshot_interval_entries: 10_000,
                frame_len_max: 4 * 1024 * 1024,
                admin_timeout_ms: 2000,
                voters: 3,
                lease_ms: 200,
                replica_sync_interval_us: 2000,
                replica_sync_interval_in_sync_us: 20_000,
                idle_poll_us: 200,
                unit_idle_poll_us: 0,
                node_restart: None,
            }
        );
        assert_eq!(config.nodes.len(), 3);
        assert_eq!(config.nodes[0].name, "n1");
        assert_eq!(config.nodes[0].id, 1);
        assert_eq!(config.nodes[2].id, 3);
        assert_eq!(config.nodes[2].peer_addr, "[::1]:7103".parse().unwrap());
        assert_eq!(config.node("n2").map(|node| node.id), Some(2));
        assert_eq!(config.node_by_id(3).map(|n| n.name.as_str()), Some("n3"));
        assert!(config.node("n4").is_none());
        assert!(config.node_by_id(0).is_none());
        assert_eq!(config.voter_ids(), vec![1, 2, 3]);
        assert!(config.learner_ids().is_empty());
        assert_eq!(
            config.node_data_dir("n2"),
            PathBuf::from("/var/lib/tandem/n2")
        );
    }

    #[test]
    fn explicit_values_override_defaults() {
        let text = EXAMPLE.replace(
            "data_dir = \"/var/lib/tandem\"\n",
            "data_dir = \"/d\"\nheartbeat_interval_ms = 20\nnode_timeout_ms = 100\n\
             raft_tick_ms = 5\nraft_heartbeat_ticks = 2\nraft_election_ticks = 10\n\
             snapshot_interval_entries = 50\nframe_len_max = 65536\nadmin_timeout_ms = 700\n\
             voters = 1\nlease_ms = 55\n",
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.cluster.heartbeat_interval_ms, 20);
        assert_eq!(config.cluster.node_timeout_ms, 100);
        assert_eq!(config.cluster.raft_tick_ms, 5);
        assert_eq!(config.cluster.raft_heartbeat_ticks, 2);
        assert_eq!(config.cluster.raft_election_ticks, 10);
        assert_eq!(config.cluster.snapshot_interval_entries, 50);
        assert_eq!(config.cluster.frame_len_max, 65536);
        assert_eq!(config.cluster.admin_timeout_ms, 700);
        assert_eq!(config.cluster.lease_ms, 55);
        assert_eq!(config.voter_ids(), vec![1]);
        assert_eq!(config.learner_ids(), vec![2, 3]);
    }

    #[test]
    fn relative_data_dir_is_resolved_against_the_config_directory() {
        let text = EXAMPLE.replace("/var/lib/tandem", "data");
        let config = Config::parse(&text, Path::new("/etc/tandem/tandem.toml")).unwrap();
        assert_eq!(config.cluster.data_dir, PathBuf::from("/etc/tandem/data"));
        assert_eq!(
            config.node_data_dir("n1"),
            PathBuf::from("/etc/tandem/data/n1")
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.cluster.data_dir, PathBuf::from("data"));
    }

    #[test]
    fn bad_address_names_line_and_key() {
        let text = EXAMPLE.replace("127.0.0.1:7102", "127.0.0.1:99999");
        let message = assert_error(&text, 12, "nodes[1].peer_addr");
        assert!(
            message.contains("\"127.0.0.1:99999\" is not a socket address (expected IP:PORT)"),
            "{message}"
        );
    }

    #[test]
    fn non_loopback_address_is_refused_with_the_reason() {
        let text = EXAMPLE.replace("127.0.0.1:7203", "10.0.0.3:7203");
        let message = assert_error(&text, 18, "nodes[2].admin_addr");
        assert!(
            message.contains(
                "is not a loopback address; tandem serves loopback only until TLS is \
                 configured (not supported yet)"
            ),
            "{message}"
        );
        // All of 127.0.0.0/8 is loopback.
        let text = EXAMPLE.replace("127.0.0.1:7203", "127.1.2.3:7203");
        assert!(parse(&text).is_ok());
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let text = EXAMPLE.replace("name = \"n2\"\n", "name = \"n2\"\ncolour = \"red\"\n");
        let message = assert_error(&text, 12, "nodes[1].colour");
        assert!(message.contains("unknown field"), "{message}");
        let text = EXAMPLE.replace("name = \"demo\"\n", "name = \"demo\"\nheartbeat_ms = 5\n");
        assert_error(&text, 3, "cluster.heartbeat_ms");
    }

    #[test]
    fn duplicate_name_names_line_and_key() {
        let text = EXAMPLE.replace("name = \"n3\"", "name = \"n1\"");
        let message = assert_error(&text, 16, "nodes[2].name");
        assert!(message.contains("nodes[0]"), "{message}");
    }

    #[test]
    fn bad_node_name_is_refused() {
        let text = EXAMPLE.replace("name = \"n3\"", "name = \"../n3\"");
        assert_error(&text, 16, "nodes[2].name");
        let text = EXAMPLE.replace("name = \"n3\"", "name = \"\"");
        assert_error(&text, 16, "nodes[2].name");
    }

    #[test]
    fn missing_name_names_line_and_key() {
        let text = EXAMPLE.replace("name = \"n2\"\n", "");
        let message = assert_error(&text, 10, "name");
        assert!(message.contains("nodes[1]"), "{message}");
        let text = EXAMPLE.replace("name = \"demo\"\n", "");
        let message = assert_error(&text, 1, "name");
        assert!(message.contains("cluster"), "{message}");
    }

    #[test]
    fn duplicate_addresses_are_refused() {
        let text = EXAMPLE.replace("127.0.0.1:7202", "127.0.0.1:7101");
        let message = assert_error(&text, 13, "nodes[1].admin_addr");
        assert!(message.contains("nodes[0].peer_addr"), "{message}");
    }

    #[test]
    fn timers_and_limits_are_checked() {
        let with = |extra: &str| {
            EXAMPLE.replace(
                "data_dir = \"/var/lib/tandem\"\n",
                &format!("data_dir = \"/var/lib/tandem\"\n{extra}\n"),
            )
        };
        assert_error(&with("raft_tick_ms = 0"), 4, "cluster.raft_tick_ms");
        let message = assert_error(&with("raft_tick_ms = 60"), 4, "cluster.raft_tick_ms");
        assert!(
            message.contains("must not exceed heartbeat_interval_ms (50)"),
            "{message}"
        );
        assert_error(&with("node_timeout_ms = 50"), 4, "cluster.node_timeout_ms");
        assert_error(
            &with("heartbeat_interval_ms = 400"),
            4,
            "cluster.heartbeat_interval_ms",
        );
        assert_error(
            &with("raft_heartbeat_ticks = 20"),
            4,
            "cluster.raft_heartbeat_ticks",
        );
        assert_error(
            &with("raft_election_ticks = 3"),
            4,
            "cluster.raft_election_ticks",
        );
        assert_error(&with("frame_len_max = 1024"), 4, "cluster.frame_len_max");
        assert_error(
            &with("frame_len_max = 300000000"),
            4,
            "cluster.frame_len_max",
        );
        assert_error(&with("voters = 0"), 4, "cluster.voters");
        assert_error(&with("voters = 4"), 4, "cluster.voters");
        let message = assert_error(&with("idle_poll_us = 10001"), 4, "cluster.idle_poll_us");
        assert!(message.contains("at most 10000"), "{message}");
        let config = parse(&with("idle_poll_us = 10000")).unwrap();
        assert_eq!(config.cluster.idle_poll_us, 10_000);
        let config = parse(&with("idle_poll_us = 0")).unwrap();
        assert_eq!(
            config.cluster.idle_poll_us, 0,
            "0 turns the default polling off"
        );
        assert_eq!(
            config.cluster.unit_idle_poll_us, 0,
            "units do not poll because the daemon does"
        );
        let key = "cluster.unit_idle_poll_us";
        let message = assert_error(&with("unit_idle_poll_us = 10001"), 4, key);
        assert!(message.contains("at most 10000"), "{message}");
        let config = parse(&with("unit_idle_poll_us = 200")).unwrap();
        assert_eq!(config.cluster.unit_idle_poll_us, 200);
        let key = "cluster.replica_sync_interval_us";
        let message = assert_error(&with("replica_sync_interval_us = 1000001"), 4, key);
        assert!(message.contains("at most 1000000"), "{message}");
        let key = "cluster.replica_sync_interval_in_sync_us";
        let message = assert_error(&with("replica_sync_interval_in_sync_us = 1000001"), 4, key);
        assert!(message.contains("at most 1000000"), "{message}");
        let message = assert_error(&with("replica_sync_interval_in_sync_us = 1000"), 4, key);
        assert!(message.contains("shorter than"), "{message}");
        // Left out, it is never below the plain interval.
        let config = parse(&with("replica_sync_interval_us = 50000")).unwrap();
        assert_eq!(config.cluster.replica_sync_interval_in_sync_us, 50_000);
        let config = parse(&with("replica_sync_interval_in_sync_us = 2000")).unwrap();
        assert_eq!(config.cluster.replica_sync_interval_in_sync_us, 2000);
        // A negative number is a type error from the TOML layer; it still names the line.
        assert_error(
            &with("admin_timeout_ms = -1"),
            4,
            "cluster.admin_timeout_ms",
        );
    }

    #[test]
    fn syntax_and_type_errors_keep_the_line() {
        let text = EXAMPLE.replace("name = \"n2\"", "name = \"n2");
        assert_error(&text, 11, "nodes[1].name");
        let text = EXAMPLE.replace("name = \"n2\"", "name = 5");
        assert_error(&text, 11, "nodes[1].name: invalid type");
        let text = EXAMPLE.replace("[[nodes]]", "[[nodes]");
        assert_error(&text, 5, "");
    }

    #[test]
    fn no_nodes_is_refused() {
        let text = "[cluster]\nname = \"x\"\ndata_dir = \"d\"\n";
        let message = parse(text).unwrap_err().to_string();
        assert!(message.starts_with("tandem.toml: nodes:"), "{message}");
    }

    #[test]
    fn missing_file_names_the_file() {
        let error = Config::load(Path::new("/nonexistent/tandem.toml")).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/tandem.toml"));
    }

    #[test]
    fn to_toml_round_trips() {
        for path in ["tandem.toml", "/etc/tandem/tandem.toml", "dev/tandem.toml"] {
            let path = Path::new(path);
            for data_dir in [
                "/var/lib/tandem",
                "/etc/tandem/data",
                "data",
                "../elsewhere/data",
            ] {
                let text = EXAMPLE
                    .replace("/var/lib/tandem", data_dir)
                    .replace("name = \"demo\"", "name = \"a \\\"quoted\\\" name\"");
                let config = Config::parse(&text, path).unwrap();
                let written = config.to_toml();
                let again = Config::parse(&written, path)
                    .unwrap_or_else(|error| panic!("{error}\n{written}"));
                assert_eq!(again, config, "{written}");
            }
        }
        // A data_dir under the config's directory is written relative to it, so that the
        // directory can be moved.
        let text = EXAMPLE.replace("/var/lib/tandem", "/etc/tandem/data");
        let config = Config::parse(&text, Path::new("/etc/tandem/tandem.toml")).unwrap();
        assert!(config.to_toml().contains("data_dir = \"data\"\n"));
        // Non-default values survive too.
        let text = EXAMPLE.replace(
            "data_dir = \"/var/lib/tandem\"\n",
            "data_dir = \"/x\"\nvoters = 1\nraft_tick_ms = 7\n",
        );
        let config = parse(&text).unwrap();
        assert_eq!(parse(&config.to_toml()).unwrap(), config);
    }

    #[test]
    fn voters_default_by_node_count() {
        for (count, voters) in [(1, 1), (2, 2), (3, 3), (4, 3), (5, 5), (7, 5)] {
            let mut text = String::from("[cluster]\nname = \"v\"\ndata_dir = \"/d\"\n");
            for i in 1..=count {
                text.push_str(&format!(
                    "[[nodes]]\nname = \"n{i}\"\npeer_addr = \"127.0.0.1:{}\"\n\
                     admin_addr = \"127.0.0.1:{}\"\n",
                    7100 + i,
                    7200 + i
                ));
            }
            let config = parse(&text).unwrap();
            assert_eq!(config.cluster.voters, voters, "{count} nodes");
            assert_eq!(config.voter_ids(), (1..=voters as u64).collect::<Vec<_>>());
            assert_eq!(
                config.learner_ids(),
                (voters as u64 + 1..=count as u64).collect::<Vec<_>>()
            );
        }
    }
}
