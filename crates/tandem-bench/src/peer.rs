//! `data-peer-redis`: the peer SPEC §7 names for sync checkpoint writes, measured on this
//! host beside tandem's own rows: Redis `SET` of a 128 B value followed by `WAIT 1 0`, which
//! returns once one replica has the write, against a primary and one replica on loopback.
//! That is the guarantee of a tandem sync commit with an in-sync STANDBY (the STANDBY applied
//! it; neither side synced it to disk). A plain `SET` (replicated afterwards) is the async row.
//!
//! The servers run with persistence off (`--save "" --appendonly no`), so no snapshot lands in
//! the middle of a measurement. Rows, `count` operations each:
//! - sequential: one `SET` (+ `WAIT`) at a time, latency p50/p99 and operations per second;
//! - 32 and 256 in flight: for `SET` alone, that many pipelined on one connection; for
//!   `SET` + `WAIT`, that many connections each waiting for its own (a `WAIT` holds its
//!   connection until the replica answered, so pipelining on one connection would be
//!   sequential; Redis answers the `WAIT`s of many connections with one replica round trip).
//!
//! Skipped (`None`) when `redis-server` is not on the `PATH` (Debian: `apt-get install
//! redis-server`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::resp::{self, Reply};

/// Value bytes, as tandem's small rows.
const VALUE_LEN: usize = 128;
/// In-flight depths, as tandem's rows.
const DEPTHS: [usize; 2] = [32, 256];

/// One row of the peer's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RedisRow {
    /// `sync` (`SET` + `WAIT 1 0`) or `async` (`SET`).
    pub mode: String,
    /// The commands of one operation.
    pub command: String,
    /// Value bytes.
    pub size: u64,
    /// Operations measured in each of the row's runs.
    pub count: u64,
    /// Sequential latency, median, µs.
    pub p50_us: f64,
    /// Sequential latency, 99th percentile, µs.
    pub p99_us: f64,
    /// Operations per second, one at a time.
    pub sequential_per_s: f64,
    /// Operations per second, 32 in flight.
    pub pipelined_per_s: f64,
    /// Operations per second, 256 in flight.
    pub deep_per_s: f64,
}

/// The peer's report.
#[derive(Debug, Clone, Serialize)]
pub struct Redis {
    /// What `redis-server --version` said.
    pub version: String,
    pub rows: Vec<RedisRow>,
}

/// A `redis-server` process, killed when dropped.
struct Server(Child);

impl Server {
    fn start(dir: &Path, port: u16, primary: Option<u16>) -> anyhow::Result<Self> {
        let dir = dir.join(port.to_string());
        std::fs::create_dir_all(&dir)?;
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            .arg("--dir")
            .arg(&dir)
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if let Some(primary) = primary {
            command.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
        }
        let child = command.spawn().context("start redis-server")?;
        Ok(Self(child))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One client connection and what it has read but not parsed yet.
struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Connection {
    async fn open(port: u16) -> std::io::Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(64 * 1024),
        })
    }

    async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// The next reply; an error reply is an error.
    async fn reply(&mut self) -> anyhow::Result<Reply> {
        loop {
            if let Some((reply, used)) = resp::parse(&self.buf)? {
                self.buf.drain(..used);
                if let Reply::Error(error) = reply {
                    bail!("redis answered: {error}");
                }
                return Ok(reply);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("redis closed the connection");
            }
        }
    }

    async fn expect_ok(&mut self) -> anyhow::Result<()> {
        match self.reply().await? {
            Reply::Status(status) if status == "OK" => Ok(()),
            other => bail!("SET answered {other:?}, not OK"),
        }
    }

    /// A `WAIT 1 0` reply: at least one replica has the writes before it.
    async fn expect_replicated(&mut self) -> anyhow::Result<()> {
        match self.reply().await? {
            Reply::Integer(replicas) if replicas >= 1 => Ok(()),
            other => bail!("WAIT 1 0 answered {other:?}, not one replica or more"),
        }
    }
}

fn set(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    resp::command(out, &[b"SET", key.as_bytes(), value]);
}

fn wait(out: &mut Vec<u8>) {
    resp::command(out, &[b"WAIT", b"1", b"0"]);
}

/// Measures Redis beside tandem, or `None` when `redis-server` is not installed.
pub fn redis(count: usize) -> anyhow::Result<Option<Redis>> {
    let version = match Command::new("redis-server").arg("--version").output() {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).context("run redis-server --version"),
        Ok(output) => String::from_utf8_lossy(&output.stdout).trim().to_owned(),
    };
    let dir = tempfile::tempdir()?;
    let ports = tandem_e2e::free_loopback_ports(2, false);
    let _primary = Server::start(dir.path(), ports[0], None)?;
    let _replica = Server::start(dir.path(), ports[1], Some(ports[0]))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rows = runtime.block_on(measure(ports[0], count))?;
    Ok(Some(Redis { version, rows }))
}

/// Connects once the server listens, within the deadline.
async fn connect(port: u16) -> anyhow::Result<Connection> {
    let started = Instant::now();
    loop {
        match Connection::open(port).await {
            Ok(connection) => return Ok(connection),
            Err(error) if started.elapsed() > tandem_e2e::DEADLINE => {
                return Err(error).context(format!("connect to redis on port {port}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn measure(port: u16, count: usize) -> anyhow::Result<Vec<RedisRow>> {
    let mut control = connect(port).await?;
    // The replica is online once the primary lists it so; before that a WAIT would block.
    let started = Instant::now();
    loop {
        let mut out = Vec::new();
        resp::command(&mut out, &[b"INFO", b"replication"]);
        control.send(&out).await?;
        if let Reply::Bulk(Some(info)) = control.reply().await? {
            if String::from_utf8_lossy(&info).contains("state=online") {
                break;
            }
        }
        if started.elapsed() > tandem_e2e::DEADLINE {
            bail!(
                "the redis replica did not come online within {:?}",
                tandem_e2e::DEADLINE
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let value = vec![b'v'; VALUE_LEN];
    // Warm both servers and the connection up.
    sequential(&mut control, "warm", (count / 10).max(100), &value, true).await?;
    let mut rows = Vec::new();
    for (mode, with_wait) in [("sync", true), ("async", false)] {
        let latencies = sequential(&mut control, mode, count, &value, with_wait).await?;
        let total: f64 = latencies.iter().sum();
        let mut sorted = latencies;
        sorted.sort_by(f64::total_cmp);
        let mut deep = Vec::new();
        for depth in DEPTHS {
            let prefix = format!("{mode}-{depth}");
            let rate = if with_wait {
                connections_in_flight(port, &prefix, count, depth, &value).await?
            } else {
                pipelined(&mut control, &prefix, count, depth, &value).await?
            };
            deep.push(rate);
        }
        rows.push(RedisRow {
            mode: mode.into(),
            command: if with_wait { "SET + WAIT 1 0" } else { "SET" }.into(),
            size: VALUE_LEN as u64,
            count: count as u64,
            p50_us: crate::quantile(&sorted, 0.5),
            p99_us: crate::quantile(&sorted, 0.99),
            sequential_per_s: count as f64 / (total / 1e6),
            pipelined_per_s: deep[0],
            deep_per_s: deep[1],
        });
    }
    Ok(rows)
}

/// `count` operations one at a time; each one's latency, µs.
async fn sequential(
    connection: &mut Connection,
    prefix: &str,
    count: usize,
    value: &[u8],
    with_wait: bool,
) -> anyhow::Result<Vec<f64>> {
    let mut latencies = Vec::with_capacity(count);
    let mut out = Vec::new();
    for i in 0..count {
        out.clear();
        set(&mut out, &format!("{prefix}:{i}"), value);
        if with_wait {
            wait(&mut out);
        }
        let started = Instant::now();
        connection.send(&out).await?;
        connection.expect_ok().await?;
        if with_wait {
            connection.expect_replicated().await?;
        }
        latencies.push(started.elapsed().as_secs_f64() * 1e6);
    }
    Ok(latencies)
}

/// `count` `SET`s on one connection with `depth` unanswered at a time; operations per second.
async fn pipelined(
    connection: &mut Connection,
    prefix: &str,
    count: usize,
    depth: usize,
    value: &[u8],
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let (mut sent, mut answered) = (0, 0);
    let mut out = Vec::new();
    while answered < count {
        out.clear();
        while sent < count && sent - answered < depth {
            set(&mut out, &format!("{prefix}:{sent}"), value);
            sent += 1;
        }
        if !out.is_empty() {
            connection.send(&out).await?;
        }
        // At least one answer, then whatever else has arrived, before topping the window up.
        connection.expect_ok().await?;
        answered += 1;
        while answered < sent {
            match resp::parse(&connection.buf)? {
                Some(_) => {
                    connection.expect_ok().await?;
                    answered += 1;
                }
                None => break,
            }
        }
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

/// `count` `SET` + `WAIT 1 0` pairs over `depth` connections, each waiting for its own;
/// operations per second.
async fn connections_in_flight(
    port: u16,
    prefix: &str,
    count: usize,
    depth: usize,
    value: &[u8],
) -> anyhow::Result<f64> {
    let mut connections = Vec::with_capacity(depth);
    for _ in 0..depth {
        connections.push(connect(port).await?);
    }
    let per_connection = count.div_ceil(depth);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (n, mut connection) in connections.into_iter().enumerate() {
        let prefix = format!("{prefix}-{n}");
        let value = value.to_vec();
        tasks.spawn(async move {
            sequential(&mut connection, &prefix, per_connection, &value, true)
                .await
                .map(|latencies| latencies.len())
        });
    }
    let mut done = 0;
    while let Some(joined) = tasks.join_next().await {
        done += joined.context("a redis client task panicked")??;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}
