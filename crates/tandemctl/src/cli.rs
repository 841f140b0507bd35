//! Command-line arguments, and the rules that decide which cluster a command talks to.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};

/// The config file `tandemctl dev up` writes by default, relative to the current directory;
/// commands find it there without `--config`.
pub const DEFAULT_CONFIG: &str = ".tandem/tandem.toml";

/// Environment variable naming the config file when neither `--endpoint` nor `--config` is
/// given.
pub const CONFIG_ENV: &str = "TANDEM_CONFIG";

/// tandemctl: operate a tandem cluster.
#[derive(Debug, Parser)]
#[command(name = "tandemctl", version, about, long_about = None)]
#[command(after_help = "\
Which cluster: --endpoint ADDR talks to that one admin endpoint; --config FILE tries each \
node's admin_addr in order. Without either, $TANDEM_CONFIG is used if set, else \
./.tandem/tandem.toml (written by `tandemctl dev up`) if it exists.")]
pub struct Cli {
    /// Admin endpoint (IP:PORT) of any daemon of the cluster.
    #[arg(long, global = true, value_name = "ADDR", conflicts_with = "config")]
    pub endpoint: Option<SocketAddr>,

    /// Cluster config file; each node's admin_addr is tried in order until one answers.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// How long to wait for each daemon to answer, in milliseconds.
    #[arg(long, global = true, value_name = "MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The per-request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the cluster: nodes (liveness, Raft progress), shards (ACTIVE, STANDBYs, epochs) and
    /// units (process, pid, admin state, faults).
    Status(StatusArgs),
    /// Planned role swap: the ACTIVE finishes its in-flight work (QUIESCING), the STANDBY takes
    /// over, the old ACTIVE becomes STANDBY. Refused when no STANDBY is ready.
    Switchover(SwitchoverArgs),
    /// Take a unit's (or a node's) assignments away at once; its process keeps running.
    Lock(OperationArgs),
    /// Put a locked unit (or node) back in service.
    Unlock(OperationArgs),
    /// Take a unit's (or a node's) assignments away gracefully, then lock it.
    Shutdown(OperationArgs),
    /// Stop a locked unit's process (or every unit process of a locked node).
    LockInstantiation(OperationArgs),
    /// Start it again (it stays locked).
    UnlockInstantiation(OperationArgs),
    /// Restart a unit's process (or every unit of a node), handing its ACTIVE shards to their
    /// STANDBYs first.
    Restart(OperationArgs),
    /// Clear a unit (or every unit of a node) that restart escalation disabled, and its
    /// escalation counters.
    Repair(OperationArgs),
    /// Show the event log of the leader: role changes, faults, recoveries, admin operations.
    Events(EventsArgs),
    /// Restrict a shard's ACTIVE to admitting a fraction of new sessions (0 to 1; `off` lifts
    /// it). The unit decides what a new session is (the SIP example answers new INVITEs with
    /// 503).
    Restrict(RestrictArgs),
    /// Send a keyed message to a service's stream (routed to the key's shard; its ACTIVE gets
    /// it through the SDK's message hook).
    Send(SendArgs),
    /// Checkpoint tools.
    #[command(subcommand)]
    Checkpoint(CheckpointCommand),
    /// Run a local cluster for development (every node on 127.0.0.1, in one directory).
    #[command(subcommand)]
    Dev(DevCommand),
}

/// Options of `restrict`.
#[derive(Debug, Args)]
pub struct RestrictArgs {
    /// The shard.
    pub shard: String,
    /// Fraction of new sessions to admit, from 0 (none) to 1 (all), or `off`.
    pub fraction: String,
    /// How long to wait for the operation to complete, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub wait_ms: u64,
}

/// Options of `send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The service.
    pub service: String,
    /// The routing key (the same key always reaches the same shard).
    pub key: String,
    /// The message.
    pub payload: String,
}

/// `checkpoint` subcommands.
#[derive(Debug, Subcommand)]
pub enum CheckpointCommand {
    /// Compare the digests of a shard's replicas (its ACTIVE's and its STANDBYs') at the same
    /// version. Exit code 0: all equal; 1: a mismatch; 2: no common version was seen in time.
    Verify(VerifyArgs),
}

/// Options of `checkpoint verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The shard.
    #[arg(value_name = "SHARD")]
    pub shard: String,
    /// How long to keep trying to see every replica at the same version, in milliseconds
    /// (under a steady write load the ACTIVE may be ahead at any one instant).
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    pub wait_ms: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What a switchover moves: one shard, every shard of a service, or every shard ACTIVE on a
/// node.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("switchover_target").required(true).args(["shard", "service", "node"]))]
pub struct SwitchoverArgs {
    /// The shard.
    #[arg(value_name = "SHARD")]
    pub shard: Option<String>,
    /// Every shard of this service.
    #[arg(long, value_name = "SERVICE")]
    pub service: Option<String>,
    /// Every shard whose ACTIVE runs on this node.
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// How long to wait for the operation to complete, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub wait_ms: u64,
}

/// The target of an AMF operation: a unit, or a node (all its units).
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("operation_target").required(true).args(["unit", "node"]))]
pub struct OperationArgs {
    /// The unit.
    #[arg(value_name = "UNIT")]
    pub unit: Option<String>,
    /// A node (the operation applies to the node and every unit on it).
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// How long to wait for the operation to complete, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    pub wait_ms: u64,
}

/// Options of `events`.
#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Keep streaming new events until interrupted (reconnects when the leader changes).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Options of `status`.
#[derive(Debug, Default, Args)]
#[command(after_help = "\
With more than 50 matching shards the table is a summary: counts per service and per unit \
and role, and only the shards that are not healthy (no ACTIVE, no in-sync STANDBY where the \
model wants one, a handover in progress, a QUIESCING unit or a role not confirmed). --all \
lists every shard. --json never summarises. Filters combine.")]
pub struct StatusArgs {
    /// Print one JSON object instead of a table (every field of every matching shard).
    #[arg(long)]
    pub json: bool,
    /// Only shards whose name matches GLOB (`*` any run of characters, `?` one; quote it).
    #[arg(long, value_name = "GLOB")]
    pub shard: Option<String>,
    /// Only shards and units of this service.
    #[arg(long, value_name = "NAME")]
    pub service: Option<String>,
    /// List every matching shard, however many (with their checkpoint replicas and sessions).
    #[arg(long)]
    pub all: bool,
}

/// The `dev` subcommands.
#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Write DIR/tandem.toml, start one tandemd per node in the background and wait until a
    /// leader is elected and every node answers.
    #[command(after_help = "\
Ports: node nI (I = 1..N) listens for peers on 127.0.0.1:(P+I) and for admin requests on \
127.0.0.1:(P+100+I); with the default P = 7100, n1 uses 7101 and 7201.

Files in DIR: tandem.toml (the config), data/<node> (Raft log and snapshots), logs/<node>.log \
(each daemon's output, appended), pids/<node>.pid. The daemons run in their own sessions and \
outlive tandemctl; stop them with `tandemctl dev down`.

The tandemd binary is $TANDEMD_BIN if set, else the one next to tandemctl.")]
    Up(DevUpArgs),
    /// Send the counter's built-in traffic (started by `dev up`; runs until `dev down`).
    #[command(hide = true)]
    Traffic(DevTrafficArgs),
    /// Stop the daemons started by `dev up` in DIR (SIGTERM, then SIGKILL after 10 s).
    Down(DevDownArgs),
}

/// Options of `dev up`.
#[derive(Debug, Args)]
pub struct DevUpArgs {
    /// Number of nodes (n1..nN); the first 3 (or 5 from 5 nodes on) vote.
    #[arg(long, value_name = "N", default_value_t = 3,
          value_parser = clap::value_parser!(u16).range(1..=7))]
    pub nodes: u16,

    /// Directory for the config, data, logs and pid files.
    #[arg(long, value_name = "DIR", default_value = ".tandem")]
    pub dir: PathBuf,

    /// Port base P: node nI uses peer port P+I and admin port P+100+I.
    #[arg(long, value_name = "P", default_value_t = 7100,
          value_parser = clap::value_parser!(u16).range(1..=65000))]
    pub base_port: u16,

    /// Delete DIR/data first, so the cluster starts from an empty Raft log.
    #[arg(long)]
    pub fresh: bool,

    /// The application to run on the cluster: `counter` (a 2n service with units on n1 and
    /// n2 counting its stream, with built-in traffic on udp 127.0.0.1:P+300), `sip` (the SIP
    /// call server, a 2n service on udp 127.0.0.1:5060), both built with
    /// `cargo build --release --examples`, or `none`.
    #[arg(long, value_name = "APP", default_value = "counter", value_parser = ["counter", "sip", "none"])]
    pub app: String,

    /// The daemons' idle polling window, `cluster.idle_poll_us`: how long an event loop polls
    /// for work before it sleeps; 0 (off) to 10000, tandemd's default when not given. On
    /// virtual machines that halt idle vCPUs without polling it buys lower checkpoint latency
    /// for CPU time. (Units poll only with `cluster.unit_idle_poll_us`, off here.)
    #[arg(long, value_name = "US", default_value_t = tandem_admin::config::DEFAULT_IDLE_POLL_US,
          value_parser = clap::value_parser!(u64).range(0..=tandem_admin::config::IDLE_POLL_US_MAX))]
    pub idle_poll_us: u64,
}

/// Options of the hidden `dev traffic`.
#[derive(Debug, Args)]
pub struct DevTrafficArgs {
    /// The ingress address to send `+1` datagrams to.
    #[arg(long)]
    pub to: std::net::SocketAddr,
    /// Datagrams per second.
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 4 * 3600)]
    pub duration_s: u64,
}

/// Options of `dev down`.
#[derive(Debug, Args)]
pub struct DevDownArgs {
    /// Directory given to `dev up`.
    #[arg(long, value_name = "DIR", default_value = ".tandem")]
    pub dir: PathBuf,
}

/// Which cluster a command talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One admin endpoint, from `--endpoint`.
    Endpoint(SocketAddr),
    /// A config file whose nodes are tried in order.
    Config(PathBuf),
}

/// Applies the rules: `--endpoint`, else `--config`, else `$TANDEM_CONFIG` (when set and not
/// empty), else [`DEFAULT_CONFIG`] when `default_config_exists`, else an error that says how
/// to name a cluster. Takes the environment as arguments so that tests need not set it.
pub fn resolve_target(
    endpoint: Option<SocketAddr>,
    config: Option<&Path>,
    config_env: Option<OsString>,
    default_config_exists: bool,
) -> anyhow::Result<Target> {
    if let Some(addr) = endpoint {
        return Ok(Target::Endpoint(addr));
    }
    if let Some(path) = config {
        return Ok(Target::Config(path.to_path_buf()));
    }
    if let Some(path) = config_env.filter(|value| !value.is_empty()) {
        return Ok(Target::Config(PathBuf::from(path)));
    }
    if default_config_exists {
        return Ok(Target::Config(PathBuf::from(DEFAULT_CONFIG)));
    }
    bail!(
        "no cluster given: pass --endpoint ADDR or --config FILE (or start one with \
         `tandemctl dev up`)"
    )
}

/// [`resolve_target`] with the real environment and file system.
pub fn target_from_environment(cli: &Cli) -> anyhow::Result<Target> {
    resolve_target(
        cli.endpoint,
        cli.config.as_deref(),
        std::env::var_os(CONFIG_ENV),
        Path::new(DEFAULT_CONFIG).is_file(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    const ADDR: &str = "127.0.0.1:7201";

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn endpoint_wins() {
        let addr: SocketAddr = ADDR.parse().unwrap();
        let target = resolve_target(Some(addr), None, Some("env.toml".into()), true).unwrap();
        assert_eq!(target, Target::Endpoint(addr));
    }

    #[test]
    fn config_flag_beats_environment_and_default() {
        let target = resolve_target(
            None,
            Some(Path::new("flag.toml")),
            Some("env.toml".into()),
            true,
        )
        .unwrap();
        assert_eq!(target, Target::Config("flag.toml".into()));
    }

    #[test]
    fn environment_beats_default() {
        let target = resolve_target(None, None, Some("env.toml".into()), true).unwrap();
        assert_eq!(target, Target::Config("env.toml".into()));
        // An empty variable counts as unset.
        let target = resolve_target(None, None, Some("".into()), true).unwrap();
        assert_eq!(target, Target::Config(DEFAULT_CONFIG.into()));
    }

    #[test]
    fn nothing_given_is_an_error_that_says_what_to_do() {
        let error = resolve_target(None, None, None, false).unwrap_err();
        assert_eq!(
            error.to_string(),
            "no cluster given: pass --endpoint ADDR or --config FILE (or start one with \
             `tandemctl dev up`)"
        );
    }

    #[test]
    fn arguments_parse() {
        let cli =
            Cli::try_parse_from(["tandemctl", "status", "--json", "--endpoint", ADDR]).unwrap();
        assert_eq!(cli.endpoint, Some(ADDR.parse().unwrap()));
        assert!(matches!(
            cli.command,
            Command::Status(StatusArgs {
                json: true,
                all: false,
                shard: None,
                service: None
            })
        ));
        let cli = Cli::try_parse_from([
            "tandemctl",
            "status",
            "--shard",
            "s-1*",
            "--service",
            "svc",
            "--all",
        ])
        .unwrap();
        match &cli.command {
            Command::Status(args) => {
                assert_eq!(args.shard.as_deref(), Some("s-1*"));
                assert_eq!(args.service.as_deref(), Some("svc"));
                assert!(args.all && !args.json);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cli.timeout(), Duration::from_secs(5));

        let cli = Cli::try_parse_from(["tandemctl", "--config", "c.toml", "status"]).unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("c.toml")));

        let cli = Cli::try_parse_from(["tandemctl", "dev", "up"]).unwrap();
        match cli.command {
            Command::Dev(DevCommand::Up(args)) => {
                assert_eq!(args.nodes, 3);
                assert_eq!(args.dir, PathBuf::from(".tandem"));
                assert_eq!(args.base_port, 7100);
                assert!(!args.fresh);
                assert_eq!(args.idle_poll_us, 200, "tandemd's default");
                assert_eq!(args.app, "counter");
            }
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["tandemctl", "dev", "up", "--idle-poll-us", "0"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Dev(DevCommand::Up(DevUpArgs {
                idle_poll_us: 0,
                ..
            }))
        ));
        // Out of range: clap's error, naming the option.
        let error = Cli::try_parse_from(["tandemctl", "dev", "up", "--idle-poll-us", "10001"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("--idle-poll-us"), "{error}");
        let cli = Cli::try_parse_from(["tandemctl", "dev", "down", "--dir", "/tmp/x"]).unwrap();
        assert!(
            matches!(cli.command, Command::Dev(DevCommand::Down(DevDownArgs { dir })) if dir == Path::new("/tmp/x"))
        );
    }

    #[test]
    fn operations_parse_and_need_exactly_one_target() {
        let cli = Cli::try_parse_from(["tandemctl", "switchover", "counter-0"]).unwrap();
        assert!(
            matches!(cli.command, Command::Switchover(SwitchoverArgs { shard: Some(ref s), .. }) if s == "counter-0")
        );
        let cli = Cli::try_parse_from(["tandemctl", "switchover", "--node", "n1"]).unwrap();
        assert!(
            matches!(cli.command, Command::Switchover(SwitchoverArgs { node: Some(ref n), .. }) if n == "n1")
        );
        let cli =
            Cli::try_parse_from(["tandemctl", "lock", "--node", "n2", "--wait-ms", "5"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Lock(OperationArgs {
                node: Some(_),
                wait_ms: 5,
                ..
            })
        ));
        let cli = Cli::try_parse_from(["tandemctl", "lock-instantiation", "counter-a"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::LockInstantiation(OperationArgs { unit: Some(_), .. })
        ));
        for args in [
            &["tandemctl", "switchover"][..],
            &["tandemctl", "switchover", "s0", "--service", "counter"],
            &["tandemctl", "restart"],
            &["tandemctl", "repair", "u", "--node", "n1"],
            &["tandemctl", "dev", "up", "--app", "sip-phone"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} was accepted");
        }
    }

    #[test]
    fn bad_arguments_are_refused() {
        for args in [
            &["tandemctl", "dev", "up", "--nodes", "0"][..],
            &["tandemctl", "dev", "up", "--nodes", "8"],
            &["tandemctl", "status", "--endpoint", "localhost"],
            &[
                "tandemctl",
                "status",
                "--endpoint",
                ADDR,
                "--config",
                "c.toml",
            ],
            &["tandemctl", "status", "--timeout-ms", "0"],
            &["tandemctl"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?} was accepted");
        }
    }
}
