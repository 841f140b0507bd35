//! Unit processes: start, watch, stop, clean up. The agent (in the core) decides; this module
//! carries its decisions out with real processes.
//!
//! - Each unit runs in its own session and process group, so stopping it stops everything it
//!   started. It gets `PR_SET_PDEATHSIG(SIGKILL)`, so a daemon killed with `kill -9` takes its
//!   units with it, and its SDK exits when the agent's socket closes.
//! - Exit is noticed at once (a pidfd becomes readable); the rest of its process group is
//!   killed then, *before* the unit is reaped, while its zombie still holds the group id, so
//!   the signal can never reach a group that reused the id. A reported exit means nothing of
//!   the unit runs. Signals sent to a unit's group later (stops) go only while it is not yet
//!   reaped, under the same lock.
//! - A graceful stop runs the service's terminate command (or sends SIGTERM to the group),
//!   waits `terminate_timeout`, then sends SIGKILL. The cleanup command runs after every exit.
//! - Every running unit's process group and token are recorded in `<dir>/<unit>.pgid`; a daemon
//!   starting after a crash kills what those files name (checked by the token in the process's
//!   environment, so a reused group id is never killed by mistake). No orphan survives.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Read as _};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tandem_core::{ProcessSpec, ServiceName, StopSpec, UnitName};
use tandem_node::UnitEvent;
use tokio::sync::watch;

use crate::event::{Event, EventSender};

/// Environment variables tandem gives every unit.
pub mod env {
    /// Path of the agent's SDK socket.
    pub const SOCKET: &str = "TANDEM_SOCKET";
    /// The unit's name.
    pub const UNIT: &str = "TANDEM_UNIT";
    /// The unit's service.
    pub const SERVICE: &str = "TANDEM_SERVICE";
    /// The node's name.
    pub const NODE: &str = "TANDEM_NODE";
    /// The instance's generation.
    pub const GENERATION: &str = "TANDEM_GENERATION";
    /// The instance's secret; the SDK proves its identity with it.
    pub const TOKEN: &str = "TANDEM_TOKEN";
    /// `1` when the unit should rebuild its local replica.
    pub const REINITIALISE: &str = "TANDEM_REINITIALISE";
    /// For terminate and cleanup commands: the unit's pid.
    pub const PID: &str = "TANDEM_PID";
    /// The node's `cluster.unit_idle_poll_us`, for the SDK's `tandem::runtime` (a service's own
    /// `env` may override it).
    pub const IDLE_POLL_US: &str = "TANDEM_IDLE_POLL_US";
}

/// What the supervisor knows of one running unit process.
#[derive(Debug)]
struct Child {
    pid: u32,
    /// Turns true when the process has exited (and its group was killed).
    exited: watch::Receiver<bool>,
    /// True once the process is reaped: from then on its pid and group id may belong to
    /// someone else, so nothing may be signalled through them. Signals are sent under this
    /// lock; the reaper sets it under the lock too.
    reaped: Arc<Mutex<bool>>,
}

impl Child {
    fn is_alive(&self) -> bool {
        !*self.exited.borrow()
    }
}

/// Sends `signal` to the process group of a unit that is not reaped yet.
fn signal_unreaped(reaped: &Mutex<bool>, pgid: u32, signal: libc::c_int) {
    let reaped = reaped.lock();
    if !*reaped {
        signal_group(pgid, signal);
    }
}

/// A pidfd for `pid` (Linux 5.3+): readable once the process has exited, without reaping it.
fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new file descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just returned to us and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until `pid` has exited without reaping it, then kills what is left of its group
/// (the zombie still holds the group id), then reaps it. Returns (exit code, signal).
async fn wait_and_reap(
    pid: u32,
    pidfd: OwnedFd,
    reaped: &Mutex<bool>,
) -> (Option<i32>, Option<i32>) {
    // SAFETY: the AsyncFd owns the OwnedFd, which stays open and unchanged until it is dropped.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
    };
    match registered {
        Ok(fd) => {
            let _ = fd.readable().await;
        }
        Err(error) => tracing::warn!(pid, %error, "cannot poll the unit's pidfd"),
    }
    let mut reaped = reaped.lock();
    signal_group(pid, libc::SIGKILL);
    let mut status: libc::c_int = 0;
    // SAFETY: waitpid on our own child with a valid status pointer. Blocking is bounded: the
    // pidfd said the process has exited (or, if polling failed, we wait for it here).
    let result = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
    *reaped = true;
    if result != pid as libc::pid_t {
        return (None, None);
    }
    if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    }
}

/// Waits until `exited` turns true, at most `timeout`; returns whether it did.
async fn wait_exit(mut exited: watch::Receiver<bool>, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, exited.wait_for(|done| *done))
        .await
        .is_ok_and(|waited| waited.is_ok())
}

/// Starts and stops unit processes of one node.
pub struct Supervisor {
    /// Where logs and pgid files go (`<data>/<node>/units`).
    dir: PathBuf,
    /// The config file's directory, against which relative program paths are resolved.
    config_dir: PathBuf,
    /// Node name, for the environment.
    node: String,
    /// The SDK socket path, for the environment.
    socket: PathBuf,
    /// `cluster.unit_idle_poll_us`, for the environment.
    unit_idle_poll_us: u64,
    /// Running processes by (unit, generation).
    children: BTreeMap<(UnitName, u64), Child>,
    /// Where exits are reported.
    events: EventSender,
}

/// A fresh secret for a unit instance: 128 random bits, hex.
pub fn new_token() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

fn signal_group(pgid: u32, signal: libc::c_int) {
    if pgid > 1 {
        // SAFETY: killpg with a positive process group id we created; no memory involved.
        unsafe {
            libc::killpg(pgid as libc::pid_t, signal);
        }
    }
}

/// Resolves a program path: one with a `/` that is relative is taken from `base`.
fn resolve(base: &Path, program: &str) -> PathBuf {
    let path = Path::new(program);
    if program.contains('/') && path.is_relative() {
        base.join(path)
    } else {
        path.to_path_buf()
    }
}

impl Supervisor {
    /// A supervisor keeping its files in `dir`.
    pub fn new(
        dir: PathBuf,
        config_dir: PathBuf,
        node: String,
        socket: PathBuf,
        unit_idle_poll_us: u64,
        events: EventSender,
    ) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            config_dir,
            node,
            socket,
            unit_idle_poll_us,
            children: BTreeMap::new(),
            events,
        })
    }

    /// Kills what a previous daemon on this node left running (after a crash), as recorded in
    /// the pgid files. Returns the number of processes killed.
    pub fn kill_orphans(&self) -> io::Result<usize> {
        let mut killed = 0;
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|ext| ext != "pgid") {
                continue;
            }
            let text = fs::read_to_string(&path).unwrap_or_default();
            let mut parts = text.split_whitespace();
            let (Some(pgid), Some(token)) = (
                parts.next().and_then(|p| p.parse::<u32>().ok()),
                parts.next(),
            ) else {
                let _ = fs::remove_file(&path);
                continue;
            };
            for pid in processes_in_group(pgid) {
                let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
                let marker = format!("{}={token}", env::TOKEN);
                if environ
                    .split(|byte| *byte == 0)
                    .any(|entry| entry == marker.as_bytes())
                {
                    // SAFETY: kill on a pid we just found carrying our instance's token.
                    unsafe {
                        libc::kill(pid as libc::pid_t, libc::SIGKILL);
                    }
                    killed += 1;
                }
            }
            let _ = fs::remove_file(&path);
        }
        Ok(killed)
    }

    /// The log file of `unit`.
    pub fn log_path(&self, unit: &UnitName) -> PathBuf {
        self.dir.join(format!("{unit}.log"))
    }

    /// Starts instance `generation` of `unit`; returns its pid.
    #[allow(clippy::too_many_arguments)] // one call site, each argument named there
    pub fn start(
        &mut self,
        unit: &UnitName,
        service: &ServiceName,
        generation: u64,
        spec: &ProcessSpec,
        reinitialise: bool,
        token: &str,
        cleanup: Option<(ProcessSpec, Duration)>,
    ) -> io::Result<u32> {
        let program = spec
            .argv
            .first()
            .ok_or_else(|| io::Error::other("empty instantiate command"))?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(unit))?;
        let mut command = std::process::Command::new(resolve(&self.config_dir, program));
        command
            .args(&spec.argv[1..])
            .env(env::IDLE_POLL_US, self.unit_idle_poll_us.to_string())
            .envs(&spec.env)
            .env(env::SOCKET, &self.socket)
            .env(env::UNIT, unit.as_str())
            .env(env::SERVICE, service.as_str())
            .env(env::NODE, &self.node)
            .env(env::GENERATION, generation.to_string())
            .env(env::TOKEN, token)
            .env(env::REINITIALISE, if reinitialise { "1" } else { "0" })
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(dir) = &spec.working_dir {
            command.current_dir(resolve(&self.config_dir, dir));
        }
        let parent = std::process::id();
        // SAFETY: only async-signal-safe calls (setsid, prctl, getppid, kill) run between fork
        // and exec. A new session makes the unit its own process group; the parent-death
        // signal takes the unit down with a daemon killed by SIGKILL (checked against the
        // race of the parent dying before prctl).
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() as u32 != parent {
                    libc::kill(libc::getpid(), libc::SIGKILL);
                }
                Ok(())
            });
        }
        // The std Child is dropped without waiting: the pidfd task below reaps it.
        let pid = command.spawn()?.id();
        let pidfd = match pidfd_open(pid) {
            Ok(fd) => fd,
            Err(error) => {
                signal_group(pid, libc::SIGKILL);
                // SAFETY: reaping the child we just killed; status is not needed.
                unsafe { libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0) };
                return Err(io::Error::other(format!(
                    "pidfd_open failed ({error}); tandemd needs Linux 5.3 or later"
                )));
            }
        };
        let pgid_file = self.dir.join(format!("{unit}.pgid"));
        fs::write(&pgid_file, format!("{pid} {token}\n"))?;
        let (exited_tx, exited) = watch::channel(false);
        let reaped = Arc::new(Mutex::new(false));
        self.children.insert(
            (unit.clone(), generation),
            Child {
                pid,
                exited,
                reaped: reaped.clone(),
            },
        );
        let events = self.events.clone();
        let unit = unit.clone();
        let config_dir = self.config_dir.clone();
        tokio::spawn(async move {
            let (code, signal) = wait_and_reap(pid, pidfd, &reaped).await;
            let _ = exited_tx.send(true);
            let _ = fs::remove_file(&pgid_file);
            tracing::info!(%unit, generation, pid, ?code, ?signal, "unit exited");
            let _ = events
                .send(Event::Unit(UnitEvent::Exited {
                    unit: unit.clone(),
                    generation,
                    code,
                    signal,
                }))
                .await;
            if let Some((spec, timeout)) = cleanup {
                run_helper(&config_dir, &spec, &unit, pid, timeout).await;
            }
        });
        Ok(pid)
    }

    /// Forgets processes that exited.
    fn reap(&mut self) {
        self.children.retain(|_, child| child.is_alive());
    }

    /// Stops instance `generation` of `unit` as `how` says. Returns false if no such process
    /// runs (it already exited; its exit was or will be reported).
    pub fn stop(&mut self, unit: &UnitName, generation: u64, how: &StopSpec) -> bool {
        self.reap();
        let Some(child) = self.children.get(&(unit.clone(), generation)) else {
            return false;
        };
        let pid = child.pid;
        let reaped = child.reaped.clone();
        tracing::info!(%unit, generation, pid, kill = how.kill, terminate = how.terminate.is_some(), "stopping unit");
        if how.kill {
            signal_unreaped(&reaped, pid, libc::SIGKILL);
            return true;
        }
        let exited = child.exited.clone();
        let terminate = how.terminate.clone();
        let timeout = how.terminate_timeout;
        let unit = unit.clone();
        let config_dir = self.config_dir.clone();
        tokio::spawn(async move {
            match terminate {
                Some(spec) => run_helper(&config_dir, &spec, &unit, pid, timeout).await,
                None => signal_unreaped(&reaped, pid, libc::SIGTERM),
            }
            if !wait_exit(exited, timeout).await {
                tracing::warn!(%unit, pid, "unit did not stop in time; killing it");
                signal_unreaped(&reaped, pid, libc::SIGKILL);
            }
        });
        true
    }

    /// Stops every unit (SIGTERM to each group), waits up to `grace` for them to exit, then
    /// kills what is left. Used when the daemon stops.
    pub async fn stop_all(&mut self, grace: Duration) {
        self.reap();
        for child in self.children.values() {
            signal_unreaped(&child.reaped, child.pid, libc::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + grace;
        for child in self.children.values() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !wait_exit(child.exited.clone(), left).await {
                signal_unreaped(&child.reaped, child.pid, libc::SIGKILL);
            }
        }
        self.children.clear();
    }

    /// Runs a service's `vip_up` (`up`) or `vip_down` command for `shard`'s ingress address, in
    /// the background, with `TANDEM_SHARD`, `TANDEM_UDP`, `TANDEM_VIP` (`up` or `down`) and
    /// `TANDEM_NODE`.
    pub fn run_vip(
        &self,
        spec: &ProcessSpec,
        shard: &tandem_core::ShardName,
        udp: std::net::SocketAddr,
        up: bool,
    ) {
        let spec = spec.clone();
        let config_dir = self.config_dir.clone();
        let shard = shard.clone();
        let node = self.node.clone();
        tokio::spawn(async move {
            let Some(program) = spec.argv.first() else {
                return;
            };
            let mut command = tokio::process::Command::new(resolve(&config_dir, program));
            command
                .args(&spec.argv[1..])
                .envs(&spec.env)
                .env("TANDEM_SHARD", shard.as_str())
                .env("TANDEM_UDP", udp.to_string())
                .env("TANDEM_VIP", if up { "up" } else { "down" })
                .env("TANDEM_NODE", &node)
                .stdin(Stdio::null())
                .kill_on_drop(true);
            match tokio::time::timeout(Duration::from_secs(30), command.status()).await {
                Ok(Ok(status)) if status.success() => {
                    tracing::info!(%shard, up, "vip command finished")
                }
                Ok(Ok(status)) => tracing::error!(%shard, up, %status, "vip command failed"),
                Ok(Err(error)) => tracing::error!(%shard, up, %error, "vip command could not run"),
                Err(_) => tracing::error!(%shard, up, "vip command ran 30 s; killed"),
            }
        });
    }

    /// Runs the node-restart command in the background.
    pub fn run_node_restart(&self, spec: &ProcessSpec) {
        let spec = spec.clone();
        let config_dir = self.config_dir.clone();
        tokio::spawn(async move {
            let Some(program) = spec.argv.first() else {
                return;
            };
            let mut command = tokio::process::Command::new(resolve(&config_dir, program));
            command
                .args(&spec.argv[1..])
                .envs(&spec.env)
                .stdin(Stdio::null());
            match command.status().await {
                Ok(status) => tracing::info!(%status, "node-restart command finished"),
                Err(error) => tracing::error!(%error, "node-restart command could not run"),
            }
        });
    }
}

/// Runs a terminate or cleanup command for `unit` (pid `pid`), killing it after `timeout`.
async fn run_helper(
    config_dir: &Path,
    spec: &ProcessSpec,
    unit: &UnitName,
    pid: u32,
    timeout: Duration,
) {
    let Some(program) = spec.argv.first() else {
        return;
    };
    let mut command = tokio::process::Command::new(resolve(config_dir, program));
    command
        .args(&spec.argv[1..])
        .envs(&spec.env)
        .env(env::UNIT, unit.as_str())
        .env(env::PID, pid.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(dir) = &spec.working_dir {
        command.current_dir(resolve(config_dir, dir));
    }
    match command.spawn() {
        Ok(mut helper) => match tokio::time::timeout(timeout, helper.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => tracing::warn!(%unit, %status, program, "helper command failed"),
            Ok(Err(error)) => tracing::warn!(%unit, %error, program, "helper command failed"),
            Err(_) => {
                tracing::warn!(%unit, program, "helper command timed out; killed");
                let _ = helper.kill().await;
            }
        },
        Err(error) => tracing::warn!(%unit, %error, program, "helper command could not start"),
    }
}

/// Pids whose process group is `pgid` (from `/proc`).
fn processes_in_group(pgid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                // Fields after the command name (which may hold spaces) start after ')'.
                stat.rsplit_once(')')
                    .map(|(_, rest)| rest.split_whitespace().nth(2) == Some(&pgid.to_string()))
                    .unwrap_or(false)
            })
        })
        .collect()
}
