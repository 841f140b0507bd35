//! Harness for end-to-end tests: real `tandemd` processes on loopback, driven and observed
//! through the admin protocol, the way an operator's tools would.
//!
//! Tests never sleep to wait for something: they poll a condition with a deadline
//! ([`wait_for`]) and fail with a message saying what did not happen.

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tandem_proto::admin::{NoopReply, Status};
use tandemd::admin_client;

/// How long one admin call may take in tests.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(1000);
/// Deadline for conditions that depend on elections, restarts and catch-up. Generous: it
/// bounds a failing test's run time, it is not a speed target.
pub const DEADLINE: Duration = Duration::from_secs(30);

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

/// Free loopback ports, found by binding them all at once and releasing them.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("local address").port())
        .collect()
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

impl TestCluster {
    /// Writes a config for `count` nodes on loopback and starts every daemon.
    pub fn start(count: usize) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ports = free_ports(count * 2);
        let mut toml = String::from("[cluster]\nname = \"e2e\"\ndata_dir = \"data\"\n");
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
        let config_path = dir.path().join("tandem.toml");
        fs::write(&config_path, toml).expect("write config");
        fs::create_dir_all(dir.path().join("logs")).expect("create logs dir");
        let mut cluster = Self {
            dir,
            config_path,
            nodes,
        };
        for index in 0..count {
            cluster.spawn(index);
        }
        cluster
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
        assert!(
            self.nodes[index].child.is_none(),
            "node {index} already running"
        );
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path(index))
            .expect("open node log");
        let child = Command::new(binary("tandemd"))
            .arg("--config")
            .arg(&self.config_path)
            .arg("--node")
            .arg(&self.nodes[index].name)
            .env("TANDEM_LOG", "info,raft=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn tandemd");
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
        admin_client::status(self.nodes[index].admin, CALL_TIMEOUT).ok()
    }

    /// Commits a no-op through node `index` (forwarded to the leader).
    pub fn noop(&self, index: usize) -> Option<NoopReply> {
        admin_client::noop(self.nodes[index].admin, CALL_TIMEOUT).ok()
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
    }
}
