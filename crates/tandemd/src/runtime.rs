//! The daemon's event loop: one task owns the [`Node`] (replica, liveness, director, agent) and
//! consumes a closed set of events (peer messages, admin requests, unit events and SDK
//! registrations) plus two timers (raft tick, heartbeat). Everything that makes the daemon act
//! passes through [`Daemon::handle`] or a timer arm; the decisions are the Node's, this loop
//! only carries them out (sockets, processes, the clock).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tandem_core::data::{
    Accepted, DataConfig, DataEvent, MessageOrigin, NotAccepted, Origin, StreamMessage,
};
use tandem_core::{
    AdminCode, AgentAction, NodeId, ServiceName, ShardName, ShardRecord, Time, UnitCommand,
    UnitName,
};
use tandem_node::{
    AdminAction, AdminResult, CompactionPolicy, FileOp, MovedShards, Node, NodeEvent, NodeSettings,
    PeerMessage, UnitEvent,
};
use tandem_proto::admin::{
    admin_request, admin_response, AdminRequest, AdminResponse, NoopReply, OperationDone,
};
use tandem_proto::peer::envelope::Body;
use tandem_proto::peer::Envelope;
use tandem_proto::sdk::{self, agent_to_unit, AgentToUnit};
use tandem_raft::disk::FsDisk;
use tandem_raft::{ReplicaConfig, WalOptions};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use tandem_io::monotonic_ns;

use crate::admin::{admin_wait, error_response, serve_admin};
use crate::config::Config;
use crate::event::{AdminOutcome, Event, EventSender, Registration};
use crate::event_log::{wall_ms, EventLog};
use crate::ingress::{Ingress, VipChange};
use crate::replicas::{DiskReport, Writer};
use crate::sdk_server;
use crate::supervisor::{self, Supervisor};
use crate::transport::{serve_peers, PeerSender, TransportStats};

/// A pass of the event loop longer than this is logged (at most every
/// [`SLOW_WARNING_EVERY`]).
const LOOP_SLOW: Duration = Duration::from_millis(50);
const SLOW_WARNING_EVERY: Duration = Duration::from_secs(1);
/// Events handled per wake-up before the node's output is processed.
const EVENT_BATCH_MAX: usize = 512;
/// Data events handled per wake-up: the loop looks at control events and timers again after
/// this many, or after this long.
const DATA_BATCH_MAX: usize = 256;
const DATA_BATCH_TIME_MAX: Duration = Duration::from_millis(5);
/// ... or once the events taken carry this many bytes of checkpoint values and messages: the
/// pass then copies them into replica files and onto the wire, so 256 commits of 64 KiB would
/// make one pass of tens of milliseconds on a busy machine (heartbeats wait meanwhile).
const DATA_BATCH_BYTES_MAX: usize = 1024 * 1024;
/// Drives per wake-up: carrying out an output can feed the node new inputs (a started
/// process's pid); these are driven at once, a bounded number of times.
const DRIVES_PER_WAKEUP_MAX: usize = 4;
/// Largest frame accepted from a peer's data connection: a commit's 8 MiB of writes plus the
/// items batched with it.
const DATA_FRAME_LEN_MAX: usize = 32 * 1024 * 1024;
/// Longest Unix socket path (sun_path is 108 bytes with its terminating zero).
const SOCKET_PATH_LEN_MAX: usize = 107;

/// What the loop knows of one unit's current instance.
#[derive(Debug)]
struct UnitConnection {
    /// The instance.
    generation: u64,
    /// Its secret, checked at registration.
    token: String,
    /// Its service.
    service: ServiceName,
    /// Whether it should rebuild its replica.
    reinitialise: bool,
    /// Where messages for it go, once it registered.
    channel: Option<mpsc::Sender<AgentToUnit>>,
    /// The restriction last sent per shard.
    restrictions: BTreeMap<ShardName, Option<u32>>,
    /// It registered and was not told its restrictions yet.
    restrictions_due: bool,
}

/// An admin request waiting for the Node's answer.
#[derive(Debug)]
struct PendingAdmin {
    reply: oneshot::Sender<AdminOutcome>,
    /// A no-op answers with a `NoopReply`, other operations with `OperationDone`.
    noop: bool,
}

/// The state the event loop owns.
struct Daemon {
    config: Config,
    name: String,
    node: Node<FsDisk>,
    peers: PeerSender,
    supervisor: Supervisor,
    events: Arc<EventLog>,
    units: BTreeMap<UnitName, UnitConnection>,
    pending_admin: BTreeMap<u64, PendingAdmin>,
    next_request_id: u64,
    /// Whether carrying out an output gave the node new inputs.
    inputs_pending: bool,
    /// The replica writer thread (copies into the files, and through it the sync thread's
    /// msyncs: the disk off the event loop).
    writer: Writer,
    /// The msync rounds' spacing, which depends on whether a commit waits for the local disk.
    sync_pace: Arc<crate::replicas::SyncPace>,
    /// The sync thread's mailbox, to nudge it when the spacing shortens.
    sync_nudge: crate::mailbox::Sender<crate::replicas::DiskWork>,
    /// Why a replica file write, sync or compaction failed, if one did: the daemon stops.
    disk_failed: Option<String>,
    /// Why the Raft log sync failed, if it did: the daemon stops to protect the log.
    raft_failed: Option<String>,
    /// The Raft log sync thread.
    raft_syncer: std::sync::mpsc::Sender<RaftSyncJob>,
    /// Outbound data connections (separate from the control connections, so that a state
    /// transfer never delays Raft or heartbeats).
    data_peers: PeerSender,
    /// Ingress addresses bound here.
    ingress: Ingress,
    /// Where ingress sockets hand their datagrams.
    events_tx: EventSender,
    /// Where the current loop pass spent its time (for the slow-pass warning).
    pass: PassTimes,
    /// Keeps the data directory's lock held while the daemon runs.
    _lock: File,
}

/// Runs the daemon for node `node_name` until `shutdown` resolves.
pub async fn run(
    config: Config,
    node_name: &str,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let node = config
        .node(node_name)
        .with_context(|| {
            format!(
                "node {node_name:?} is not in {} (known: {})",
                config.path.display(),
                config
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?
        .clone();
    let data_dir = config.node_data_dir(node_name);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("create data directory {}", data_dir.display()))?;
    let lock = lock_data_dir(&data_dir)?;
    let disk = FsDisk::open(data_dir.join("raft"))
        .with_context(|| format!("open raft directory in {}", data_dir.display()))?;
    let cluster = &config.cluster;
    let settings = NodeSettings {
        replica: ReplicaConfig {
            id: node.id,
            voters: config.voter_ids(),
            learners: config.learner_ids(),
            heartbeat_ticks: cluster.raft_heartbeat_ticks,
            election_ticks: cluster.raft_election_ticks,
            snapshot_interval_entries: cluster.snapshot_interval_entries,
            election_seed: entropy(node.id),
            wal: WalOptions::default(),
            // The log's fsync runs on its own thread: heartbeats and lease renewals go on
            // while the disk is slow.
            deferred_sync: true,
            // A walk over every shard per entry: the simulation's check, not the daemon's.
            check_model: false,
        },
        heartbeat_interval: Duration::from_millis(cluster.heartbeat_interval_ms),
        node_timeout: Duration::from_millis(cluster.node_timeout_ms),
        lease: Duration::from_millis(cluster.lease_ms),
        members: config.nodes.iter().map(|node| NodeId(node.id)).collect(),
        topology: config.topology.clone(),
        data: DataConfig::default(),
        // Distinct per run (session and forward ids are drawn from it), 24 bits.
        data_incarnation: entropy(node.id) & 0xff_ffff,
        compaction: CompactionPolicy::default(),
    };
    let logger = tandem_raft::logging::raft_logger(node.id);
    let mut opened = Node::open(settings, disk, &logger).context("open raft log")?;
    let recovery = opened.replica().recovery().clone();
    if let Some((file, offset, dropped)) = &recovery.torn_tail {
        tracing::warn!(%file, offset, dropped_bytes = dropped, "recovered from a torn raft log tail");
    }
    tracing::info!(
        node = %node.name,
        id = node.id,
        peer = %node.peer_addr,
        admin = %node.admin_addr,
        data = %data_dir.display(),
        bootstrapped = recovery.bootstrapped,
        entries = recovery.entries,
        snapshot = recovery.snapshot_index,
        term = opened.replica().term(),
        commit = opened.replica().commit_index(),
        services = config.topology.services.len(),
        "tandemd starting"
    );
    tracing::warn!("no TLS configured: peer and admin endpoints accept loopback addresses only");

    let peer_listener = TcpListener::bind(node.peer_addr)
        .await
        .with_context(|| format!("bind peer address {}", node.peer_addr))?;
    let admin_listener = TcpListener::bind(node.admin_addr)
        .await
        .with_context(|| format!("bind admin address {}", node.admin_addr))?;
    let socket = data_dir.join("sdk.sock");
    if socket.as_os_str().len() > SOCKET_PATH_LEN_MAX {
        bail!(
            "the SDK socket path {} is longer than the {SOCKET_PATH_LEN_MAX} bytes a Unix \
             socket allows; use a shorter cluster.data_dir",
            socket.display()
        );
    }
    let sdk_listener = sdk_server::bind(&socket)
        .with_context(|| format!("bind the SDK socket {}", socket.display()))?;

    let stats = Arc::new(TransportStats::default());
    let peer_addrs: BTreeMap<u64, SocketAddr> = config
        .nodes
        .iter()
        .filter(|peer| peer.id != node.id)
        .map(|peer| (peer.id, peer.peer_addr))
        .collect();
    let data_peers = PeerSender::start(peer_addrs.clone(), stats.clone());
    let peers = PeerSender::start(peer_addrs, stats.clone());
    let opened_replicas = crate::replicas::open(data_dir.join("replicas"))?;
    for found in opened_replicas.replicas {
        tracing::info!(shard = %found.id.shard, unit = %found.id.unit, version = found.recovered.replica.version(), complete = found.recovered.complete, "replica read back");
        opened.load_replica(
            found.id,
            found.recovered.replica,
            found.recovered.complete,
            found.generation,
            found.len,
        );
    }
    let (events_tx, mut events, mut data_events) = EventSender::new();
    let sync_events = events_tx.clone();
    let backlog = crate::replicas::Backlog::default();
    let sync_interval = Duration::from_micros(config.cluster.replica_sync_interval_us);
    let sync_pace = crate::replicas::SyncPace::new(
        sync_interval,
        Duration::from_micros(config.cluster.replica_sync_interval_in_sync_us),
    );
    let syncer =
        crate::replicas::start_syncer(sync_pace.clone(), backlog.clone(), move |outcome| {
            sync_events
                .blocking_send(Event::ReplicaDisk(outcome))
                .is_ok()
        })
        .context("start the replica sync thread")?;
    let sync_nudge = syncer.clone();
    let write_events = events_tx.clone();
    let writer = crate::replicas::start_writer(
        opened_replicas.writer,
        backlog,
        syncer,
        crate::replicas::writer_linger(sync_interval),
        move |outcome| {
            write_events
                .blocking_send(Event::ReplicaDisk(outcome))
                .is_ok()
        },
    )
    .context("start the replica writer thread")?;
    let raft_sync_events = events_tx.clone();
    let raft_syncer = start_raft_syncer(move |outcome| {
        raft_sync_events
            .blocking_send(Event::RaftSynced(outcome))
            .is_ok()
    })
    .context("start the raft log sync thread")?;
    let event_log = Arc::new(EventLog::new(&node.name));
    let config_dir = config
        .path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let config_dir = std::path::absolute(&config_dir).unwrap_or(config_dir);
    let supervisor = Supervisor::new(
        data_dir.join("units"),
        config_dir,
        node.name.clone(),
        socket.clone(),
        config.cluster.unit_idle_poll_us,
        events_tx.clone(),
    )
    .with_context(|| format!("prepare unit directory in {}", data_dir.display()))?;
    match supervisor.kill_orphans() {
        Ok(0) => {}
        Ok(killed) => tracing::warn!(killed, "killed unit processes left by a previous daemon"),
        Err(error) => tracing::warn!(%error, "could not look for orphaned unit processes"),
    }
    tokio::spawn(serve_peers(
        peer_listener,
        cluster.name.clone(),
        node.id,
        // Data connections carry commits of up to 8 MiB and transfer batches.
        cluster.frame_len_max.max(DATA_FRAME_LEN_MAX),
        events_tx.clone(),
        stats.clone(),
    ));
    tokio::spawn(serve_admin(
        admin_listener,
        cluster.frame_len_max,
        Duration::from_millis(cluster.admin_timeout_ms),
        events_tx.clone(),
        event_log.clone(),
    ));
    tokio::spawn(sdk_server::serve(sdk_listener, events_tx.clone()));

    let mut tick = tokio::time::interval(Duration::from_millis(cluster.raft_tick_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeat = tokio::time::interval(Duration::from_millis(cluster.heartbeat_interval_ms));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let grace = config
        .topology
        .services
        .iter()
        .map(|service| Duration::from_millis(service.timeouts.terminate_ms))
        .max()
        .unwrap_or_default();
    let mut daemon = Daemon {
        name: node.name.clone(),
        config,
        node: opened,
        peers,
        supervisor,
        events: event_log,
        units: BTreeMap::new(),
        pending_admin: BTreeMap::new(),
        next_request_id: 1,
        inputs_pending: false,
        writer,
        sync_pace,
        sync_nudge,
        disk_failed: None,
        raft_syncer,
        raft_failed: None,
        data_peers,
        ingress: Ingress::default(),
        events_tx: events_tx.clone(),
        pass: PassTimes::default(),
        _lock: lock,
    };
    tokio::pin!(shutdown);
    let mut last_slow_warning: Option<Instant> = None;
    let mut last_pause_warning: Option<Instant> = None;
    let result = loop {
        let iteration;
        let paused = daemon.writer.intake_paused();
        if paused && last_pause_warning.is_none_or(|at: Instant| at.elapsed() > SLOW_WARNING_EVERY)
        {
            last_pause_warning = Some(Instant::now());
            tracing::warn!(
                queued_mib = daemon.writer.queued_bytes() / (1024 * 1024),
                "replica file writes fall behind the disk; data intake waits for them"
            );
        }
        tokio::select! {
            // Control first, then timers, then data (see `Event::is_data`).
            biased;
            _ = &mut shutdown => break Ok(()),
            event = events.recv() => {
                iteration = Instant::now();
                let Some(event) = event else { break Ok(()) };
                daemon.handle(event);
                for _ in 1..EVENT_BATCH_MAX {
                    match events.try_recv() {
                        Ok(event) => daemon.handle(event),
                        Err(_) => break,
                    }
                }
            }
            _ = tick.tick() => {
                iteration = Instant::now();
                let now = daemon.now();
                daemon.node.tick(now, wall_ms());
            }
            _ = heartbeat.tick() => {
                iteration = Instant::now();
                let now = daemon.now();
                daemon.node.heartbeat(now);
            }
            event = data_events.recv(), if !paused => {
                iteration = Instant::now();
                let Some(event) = event else { break Ok(()) };
                let mut bytes = event.payload_len();
                daemon.handle(event);
                for _ in 1..DATA_BATCH_MAX {
                    if iteration.elapsed() > DATA_BATCH_TIME_MAX || bytes >= DATA_BATCH_BYTES_MAX {
                        break;
                    }
                    match data_events.try_recv() {
                        Ok(event) => {
                            bytes += event.payload_len();
                            daemon.handle(event);
                        }
                        Err(_) => break,
                    }
                }
            }
            // Last: what a step's budget held back (data work, committed entries left to
            // apply) goes on once nothing else is waiting, after a yield. The daemon runs on
            // one thread: a branch that is always ready would keep this loop from ever
            // returning to the scheduler, and the tasks that carry leases to the units,
            // heartbeats to the peers and the peers' acknowledgements back would not run
            // until the backlog was gone (once the other branches have used up tokio's budget
            // they stay pending until the loop yields).
            () = tokio::task::yield_now(),
                if daemon.node.has_data_work() || daemon.node.has_raft_work() =>
            {
                iteration = Instant::now();
            }
            () = daemon.writer.resumed(), if paused => {
                iteration = Instant::now();
            }
        }
        let handled = iteration.elapsed();
        daemon.pass = PassTimes::default();
        let result = daemon.drive();
        let took = iteration.elapsed();
        if took > LOOP_SLOW
            && last_slow_warning.is_none_or(|at: Instant| at.elapsed() > SLOW_WARNING_EVERY)
        {
            // Heartbeats and lease renewals wait while the loop is busy: a loop this slow
            // puts leases at risk.
            last_slow_warning = Some(Instant::now());
            tracing::warn!(
                ms = took.as_millis() as u64,
                events_ms = handled.as_millis() as u64,
                raft_ms = daemon.pass.node.as_millis() as u64,
                data_ms = daemon.pass.data.as_millis() as u64,
                files_ms = daemon.pass.files.as_millis() as u64,
                "the event loop was busy this long in one pass; leases lapse if it grows"
            );
        }
        if let Err(error) = result {
            break Err(error);
        }
    };
    tracing::info!(node = %daemon.name, "tandemd stopping; stopping its units");
    daemon
        .supervisor
        .stop_all(grace + Duration::from_secs(1))
        .await;
    result
}

/// Takes an exclusive lock on the node's data directory so two daemons never share one log.
fn lock_data_dir(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("open lock file {}", path.display()))?;
    // SAFETY: flock on a valid, owned file descriptor has no memory-safety conditions.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if locked != 0 {
        bail!(
            "data directory {} is in use by another tandemd (lock {} is held)",
            dir.display(),
            path.display()
        );
    }
    Ok(file)
}

/// Time one loop pass spent driving the node (Raft, director, agent) and the data plane (and,
/// of that, writing replica files); the slow-pass warning shows them with the time spent
/// handling the events themselves.
#[derive(Debug, Default)]
struct PassTimes {
    node: Duration,
    data: Duration,
    /// Of `data`: waiting for the replica writer thread to catch up.
    files: Duration,
}

/// A Raft log fdatasync this slow is worth a warning: a lease's floor waits for it.
const RAFT_SYNC_SLOW: Duration = Duration::from_millis(100);

/// A Raft log fsync for the sync thread.
type RaftSyncJob = tandem_raft::SyncJob<tandem_raft::disk::FsSyncer>;

/// Starts the thread that runs the Raft log's fsyncs, one at a time, and reports each with
/// `report` (which returns false once the loop is gone).
fn start_raft_syncer(
    report: impl Fn(Result<u64, String>) -> bool + Send + 'static,
) -> std::io::Result<std::sync::mpsc::Sender<RaftSyncJob>> {
    use tandem_raft::disk::FileSyncer;
    let (sender, jobs) = std::sync::mpsc::channel::<RaftSyncJob>();
    std::thread::Builder::new()
        .name("raft-sync".into())
        .spawn(move || {
            let mut last_warning: Option<Instant> = None;
            for job in jobs {
                let started = Instant::now();
                let outcome = job.syncer.sync();
                let took = started.elapsed();
                if took >= RAFT_SYNC_SLOW
                    && last_warning.is_none_or(|at| at.elapsed() > SLOW_WARNING_EVERY)
                {
                    last_warning = Some(Instant::now());
                    tracing::warn!(
                        took_ms = took.as_millis() as u64,
                        "a raft log fdatasync was slow; commits of cluster decisions, and so \
                         lease renewals, wait for it (is the disk saturated?)"
                    );
                }
                let outcome = outcome
                    .map(|()| job.number)
                    .map_err(|error| format!("fdatasync of the raft log: {error}"));
                let failed = outcome.is_err();
                if !report(outcome) || failed {
                    break;
                }
            }
        })?;
    Ok(sender)
}

/// A seed for election timeouts that differs between nodes and restarts.
fn entropy(node_id: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32) ^ node_id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Daemon {
    /// The node's `Time`: CLOCK_MONOTONIC, in µs. Not the time since this process started:
    /// a lease grant answers a heartbeat by its send time, and one that reaches a restarted
    /// daemon (queued for the process before) must read as old to the new process, not as
    /// sent a moment ago or in its future (see `Node::on_peer`).
    fn now(&self) -> Time {
        Time::from_micros(monotonic_ns() / 1000)
    }

    /// Sends messages to peers (each in an envelope from this node).
    fn send_peer_messages(&self, messages: &[(u64, PeerMessage)]) {
        for (to, message) in messages {
            let envelope = Envelope {
                cluster: self.config.cluster.name.clone(),
                from: self.node.id().0,
                to: *to,
                body: Some(tandem_node::wire::encode(message)),
            };
            self.peers.send(&envelope);
        }
    }

    fn handle(&mut self, event: Event) {
        let now = self.now();
        match event {
            Event::Peer(Envelope {
                from,
                body: Some(Body::Data(message)),
                ..
            }) => match tandem_proto::data_wire::decode_message(message) {
                Ok(message) => self.node.on_data_peer(now, NodeId(from), message),
                Err(error) => {
                    tracing::warn!(from, %error, "undecodable data message dropped")
                }
            },
            Event::Peer(envelope) => match tandem_node::wire::decode(envelope.body) {
                Ok(message) => {
                    self.node.on_peer(now, envelope.from, message);
                    // A lease grant or a heartbeat's answer leaves now, not after the rest of
                    // this pass: under load a pass takes tens of milliseconds, all of it off
                    // the leases.
                    let urgent = self.node.take_urgent();
                    self.send_peer_messages(&urgent);
                }
                Err(error) => {
                    tracing::warn!(from = envelope.from, %error, "undecodable peer message dropped")
                }
            },
            Event::PeerLinkLost(from) => {
                tracing::info!(peer = from, "peer closed its connection");
                self.node.on_link_lost(now, from);
            }
            Event::Admin { request, reply } => self.on_admin(request, reply),
            Event::Unit(event) => self.node.on_unit(now, event),
            Event::Register(registration) => self.on_register(registration),
            Event::UnitData {
                unit,
                generation,
                id,
                request,
            } => self.node.on_unit_data(now, &unit, generation, id, request),
            Event::Ingress {
                shard,
                payload,
                peer,
                tcp,
            } => {
                let message = StreamMessage {
                    payload,
                    origin: MessageOrigin {
                        origin: if tcp { Origin::Tcp } else { Origin::Udp },
                        peer: peer.to_string(),
                    },
                };
                if let Err(reason) = self.node.accept_message(now, &shard, message) {
                    tracing::debug!(%shard, %peer, %reason, "ingress datagram dropped");
                }
            }
            Event::ReplicaDisk(Ok(DiskReport::Synced(reports))) => {
                self.node.on_replicas_synced(reports)
            }
            Event::ReplicaDisk(Ok(DiskReport::Installed(done))) => {
                self.node.on_compaction_installed(done)
            }
            Event::ReplicaDisk(Err(error)) => {
                self.disk_failed = Some(format!("replica files: {error}"))
            }
            Event::RaftSynced(Ok(number)) => {
                self.node.synced(number);
                self.inputs_pending = true;
            }
            Event::RaftSynced(Err(error)) => self.raft_failed = Some(error),
            Event::IngressReply {
                shard,
                peer,
                payload,
                tcp,
            } => {
                if !self.ingress.reply(&shard, peer, &payload, tcp) {
                    tracing::debug!(%shard, %peer, "reply dropped: this node does not hold the shard's ingress");
                }
            }
        }
    }

    fn on_register(&mut self, registration: Registration) {
        let Registration {
            unit,
            generation,
            token,
            channel,
            reply,
        } = registration;
        let now = self.now();
        let answer = match self.units.get_mut(&unit) {
            Some(connection)
                if connection.generation == generation && connection.token == token =>
            {
                if self.node.on_registered(now, &unit, generation) {
                    connection.channel = Some(channel);
                    connection.restrictions_due = true;
                    Ok(sdk::Welcome {
                        unit: unit.0.clone(),
                        service: connection.service.0.clone(),
                        node: self.name.clone(),
                        generation,
                        reinitialise: connection.reinitialise,
                        checkpoint_async: self
                            .node
                            .state()
                            .topology
                            .service(&connection.service)
                            .is_some_and(|service| !service.checkpoint.sync),
                    })
                } else {
                    Err(format!(
                        "instance {generation} of unit {unit} is not expected to register now"
                    ))
                }
            }
            Some(_) | None => Err(format!(
                "no instance {generation} of unit {unit} was started by this tandemd (wrong \
                 token or generation; units must be started by tandemd)"
            )),
        };
        if let Err(reason) = &answer {
            tracing::warn!(%unit, generation, %reason, "SDK registration refused");
        }
        let _ = reply.send(answer);
    }

    /// Handles an admin request: answers it, keeps it until the Node answers, or forwards it.
    fn on_admin(&mut self, request: AdminRequest, reply: oneshot::Sender<AdminOutcome>) {
        let leader_addr = self
            .node
            .replica()
            .leader_id()
            .filter(|leader| *leader != self.node.id().0)
            .and_then(|leader| self.config.node_by_id(leader))
            .map(|leader| leader.admin_addr);
        let may_forward = !request.forwarded;
        let Some(kind) = &request.kind else {
            let _ = reply.send(AdminOutcome::Reply(error_response(
                AdminCode::BadRequest,
                "empty admin request (client newer than this daemon?)",
            )));
            return;
        };
        if let admin_request::Kind::Send(send) = kind {
            let response = self.send(send);
            let _ = reply.send(AdminOutcome::Reply(response));
            return;
        }
        if let admin_request::Kind::Status(ask) = kind {
            let outcome = match leader_addr {
                // The leader's answer is the one wanted; this node's own is built only if the
                // leader cannot be reached (the admin task then asks again, `forwarded`).
                Some(leader) if may_forward && !ask.data_only && !self.node.is_leader() => {
                    AdminOutcome::Forward {
                        leader,
                        fallback: None,
                    }
                }
                _ => {
                    let status = crate::status::answer(
                        &self.config,
                        &self.name,
                        &self.node,
                        self.now(),
                        ask,
                    );
                    AdminOutcome::Reply(AdminResponse {
                        kind: Some(admin_response::Kind::Status(status)),
                    })
                }
            };
            let _ = reply.send(outcome);
            return;
        }
        if !self.node.is_leader() {
            let no_leader = error_response(
                AdminCode::NoLeader,
                format!(
                    "{} knows no reachable leader; a majority of voters must be up and connected",
                    self.name
                ),
            );
            let outcome = match leader_addr {
                Some(leader) if may_forward => AdminOutcome::Forward {
                    leader,
                    fallback: Some(no_leader),
                },
                _ => AdminOutcome::Reply(no_leader),
            };
            let _ = reply.send(outcome);
            return;
        }
        let action = match crate::admin::decode_action(&self.config, kind) {
            Ok(action) => action,
            Err(refusal) => {
                let _ = reply.send(AdminOutcome::Reply(error_response(
                    refusal.code,
                    refusal.message,
                )));
                return;
            }
        };
        let noop = action == AdminAction::Noop;
        let id = self.next_request_id;
        self.next_request_id += 1;
        let wait = admin_wait(
            &request,
            Duration::from_millis(self.config.cluster.admin_timeout_ms),
        );
        // Answer a little before the connection gives up, so the client hears what is left.
        let deadline = self.now() + wait.saturating_sub(wait / 10);
        match self.node.admin(self.now(), id, action, deadline) {
            Ok(()) => {
                self.pending_admin.insert(id, PendingAdmin { reply, noop });
            }
            Err(refusal) => {
                let _ = reply.send(AdminOutcome::Reply(error_response(
                    refusal.code,
                    refusal.message,
                )));
            }
        }
    }

    /// Drives the node until it has nothing more to do (bounded), carrying out its output.
    fn drive(&mut self) -> anyhow::Result<()> {
        for _ in 0..DRIVES_PER_WAKEUP_MAX {
            self.inputs_pending = false;
            let started = Instant::now();
            let output = self
                .node
                .drive(self.now(), wall_ms())
                .context("raft storage failed; stopping to protect the log")?;
            self.pass.node += started.elapsed();
            if let Some(error) = &self.raft_failed {
                bail!("raft log sync failed: {error}; stopping to protect the log");
            }
            if let Some(job) = self
                .node
                .take_sync()
                .context("raft storage failed; stopping to protect the log")?
            {
                if self.raft_syncer.send(job).is_err() {
                    bail!("the raft log sync thread stopped");
                }
            }
            self.send_peer_messages(&output.messages);
            for action in output.actions {
                self.carry_out(action);
            }
            for event in &output.events {
                self.log_event(event);
            }
            for (id, answer) in output.admin {
                self.answer_admin(id, answer);
            }
            // A refused command is normal (a plan made on a state that moved on, every node
            // refuses it alike): counted per drive, each one only at debug level, so that a
            // leader change amid thousands of plans does not flood the log.
            let mut refused = 0usize;
            for applied in &output.applied {
                if let tandem_core::ApplyOutcome::Unsafe(reason) = &applied.outcome {
                    tracing::error!(index = applied.index, command = ?applied.command, %reason, "command refused when applied: it would break the one-ACTIVE invariant (a bug; please report it)");
                } else if let Some(reason) = applied.outcome.refusal() {
                    refused += 1;
                    tracing::debug!(index = applied.index, command = ?applied.command, %reason, "command refused when applied");
                }
            }
            if refused > 0 {
                tracing::info!(
                    refused,
                    "commands refused when applied (planned on a state that moved on)"
                );
            }
            let started = Instant::now();
            self.data_step()?;
            self.pass.data += started.elapsed();
            if !self.inputs_pending {
                break;
            }
        }
        Ok(())
    }

    /// Runs the node's data step on what it committed, carrying out each round of its output
    /// (messages to peers, answers and deliveries to units, events, then the file operations
    /// for the writer thread).
    fn data_step(&mut self) -> anyhow::Result<()> {
        if let Some(error) = &self.disk_failed {
            bail!("{error}; stopping");
        }
        let now = self.now();
        let start = self.node.begin_data_step(now);
        // The ingress follows the view and the topology, both of the committed state; between
        // their changes only its grace periods and bind retries move, on the passes of ticks.
        if start.state_moved || self.ingress.has_timed_work() {
            let changes = self.ingress.reconcile(
                self.node.data_view(),
                &self.node.state().topology,
                self.node.id(),
                &self.events_tx,
            );
            for change in changes {
                self.vip(change);
            }
        }
        if start.lease_lapsed {
            // Units here act ACTIVE: losing the lease stops them; say why.
            let applied = self.node.replica().applied_index();
            match self.node.newest_grant() {
                Some((sent_at, floor)) => tracing::warn!(
                    newest_grant_age_ms = now.saturating_since(sent_at).as_millis() as u64,
                    floor,
                    applied,
                    "this node's lease lapsed; its ACTIVE units stop acting until it is renewed"
                ),
                None => tracing::warn!(applied, "this node's lease lapsed (no grant kept)"),
            }
        }
        for _ in 0..DRIVES_PER_WAKEUP_MAX {
            let Some(round) = self.node.take_data_round(now) else {
                break;
            };
            for (to, message) in &round.messages {
                let envelope = Envelope {
                    cluster: self.config.cluster.name.clone(),
                    from: self.node.id().0,
                    to: to.0,
                    body: Some(Body::Data(tandem_proto::data_wire::encode_message(message))),
                };
                self.data_peers.send(&envelope);
            }
            for (unit, generation, id, reply) in &round.replies {
                self.send_to_unit(
                    unit,
                    *generation,
                    agent_to_unit::Kind::Answer(tandem_proto::sdk_wire::encode_answer(*id, reply)),
                );
            }
            for (unit, generation, delivery) in &round.deliveries {
                self.send_to_unit(
                    unit,
                    *generation,
                    agent_to_unit::Kind::Delivery(tandem_proto::sdk_wire::encode_delivery(
                        delivery,
                    )),
                );
            }
            for event in &round.events {
                self.log_data_event(event);
            }
            // The disk last, off the loop: what goes out now does not depend on it (a commit
            // waiting for the local disk is answered after a sync is reported), and the
            // copies sent to STANDBYs are written there meanwhile (the simulation runs this
            // order, with syncs that come late).
            self.write_files(round.file_ops)?;
        }
        let end = self.node.end_data_step();
        if self.sync_pace.set_awaited(end.awaits_local_durability) {
            // A commit may now wait for the disk: the sync thread must not keep lingering for
            // the in-sync spacing. A sync thread that is gone shows at the next hand-over.
            crate::replicas::SyncPace::nudge(&self.sync_nudge);
        }
        let registered = self
            .units
            .values()
            .any(|connection| connection.restrictions_due);
        if start.state_moved || registered {
            self.send_restrictions();
        }
        Ok(())
    }

    /// Hands the queued replica file operations to the writer thread. It waits only when the
    /// writer is [`WRITES_QUEUED_MAX`](crate::replicas::WRITES_QUEUED_MAX) behind: that wait
    /// is the pass's `files` time.
    fn write_files(&mut self, ops: Vec<FileOp>) -> anyhow::Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let waited = self
            .writer
            .send(ops)
            .with_context(|| match &self.disk_failed {
                Some(error) => format!("{error}; stopping"),
                None => "replica files; stopping".to_owned(),
            })?;
        self.pass.files += waited;
        Ok(())
    }

    /// Tells each local unit holding a shard its committed processing restriction whenever it
    /// changes, and all of them once after the unit registered. Costs the shards that moved
    /// (and, for a unit that just registered, the shards it holds), not every shard.
    fn send_restrictions(&mut self) {
        let moved = self.node.take_moved_shards();
        let state = self.node.state();
        let mut messages = Vec::new();
        for (unit, connection) in &mut self.units {
            if connection.channel.is_none() {
                continue;
            }
            let mut tell = |connection: &mut UnitConnection, shard: &ShardRecord| {
                let known = connection.restrictions.get(&shard.name);
                if known != Some(&shard.admitted_permille) {
                    connection
                        .restrictions
                        .insert(shard.name.clone(), shard.admitted_permille);
                    messages.push((
                        unit.clone(),
                        connection.generation,
                        sdk::Restriction {
                            shard: shard.name.0.clone(),
                            admitted_permille: shard.admitted_permille,
                        },
                    ));
                }
            };
            let holds = |shard: &ShardName| {
                state
                    .shards
                    .get(shard)
                    .filter(|record| record.roles.contains_key(unit))
            };
            match &moved {
                MovedShards::Some(moved) if !connection.restrictions_due => {
                    for shard in moved {
                        match holds(shard) {
                            Some(record) => tell(connection, record),
                            None => {
                                connection.restrictions.remove(shard);
                            }
                        }
                    }
                }
                _ => {
                    connection.restrictions_due = false;
                    connection
                        .restrictions
                        .retain(|shard, _| holds(shard).is_some());
                    for record in state.shards_naming(unit) {
                        if record.roles.contains_key(unit) {
                            tell(connection, record);
                        }
                    }
                }
            }
        }
        for (unit, generation, restriction) in messages {
            self.send_to_unit(
                &unit,
                generation,
                agent_to_unit::Kind::Restrict(restriction),
            );
        }
    }

    /// Runs a service's `vip_up` / `vip_down` command for an ingress address taken or given up.
    fn vip(&self, change: VipChange) {
        let (shard, udp, up) = match &change {
            VipChange::Up { shard, udp } => (shard, udp, true),
            VipChange::Down { shard, udp } => (shard, udp, false),
        };
        let state = self.node.state();
        let Some(service) = state
            .shards
            .get(shard)
            .and_then(|record| state.topology.service(&record.service))
        else {
            return;
        };
        let spec = if up {
            &service.vip_up
        } else {
            &service.vip_down
        };
        if let Some(spec) = spec {
            self.supervisor.run_vip(spec, shard, *udp, up);
        }
    }

    /// Answers a client's keyed message: routed to its shard, appended to its stream here or
    /// forwarded to the primary's node.
    fn send(&mut self, request: &tandem_proto::admin::SendRequest) -> AdminResponse {
        let now = self.now();
        let topology = &self.node.state().topology;
        let Some(service) = topology.service(&ServiceName(request.service.clone())) else {
            return error_response(
                AdminCode::NotFound,
                format!(
                    "there is no service {:?} (services: {})",
                    request.service,
                    topology
                        .services
                        .iter()
                        .map(|service| service.name.0.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        };
        if service.shards.is_empty() || service.model.multi_active() {
            return error_response(
                AdminCode::BadRequest,
                format!(
                    "service {} has no single-ACTIVE shards to take messages",
                    request.service
                ),
            );
        }
        let shard = shard_for(&service.shards, &request.key);
        let message = StreamMessage {
            payload: request.payload.clone(),
            origin: MessageOrigin {
                origin: Origin::Client,
                peer: String::new(),
            },
        };
        match self.node.accept_message(now, &shard, message) {
            Ok(accepted) => {
                let (outcome, seq) = match accepted {
                    Accepted::Appended(seq) => ("appended", seq),
                    Accepted::Forwarded(_) => ("forwarded", 0),
                    Accepted::Held => ("held", 0),
                };
                AdminResponse {
                    kind: Some(admin_response::Kind::Sent(tandem_proto::admin::SendReply {
                        shard: shard.0,
                        outcome: outcome.to_owned(),
                        seq,
                    })),
                }
            }
            Err(reason) => {
                let code = match &reason {
                    NotAccepted::Invalid(_) => AdminCode::BadRequest,
                    NotAccepted::NoShard(_) => AdminCode::NotFound,
                    NotAccepted::TooManyHeld { .. } => AdminCode::Busy,
                };
                error_response(code, reason.to_string())
            }
        }
    }

    fn log_data_event(&self, event: &DataEvent) {
        let (kind, text) = match event {
            DataEvent::SessionStarted {
                standby,
                epoch,
                full,
                count,
                bytes,
            } => (
                "data",
                if *full {
                    format!(
                        "state transfer to STANDBY {} of shard {} started (epoch {epoch}): {count} sections, {bytes} bytes",
                        standby.unit, standby.shard
                    )
                } else {
                    format!(
                        "STANDBY {} of shard {} catches up by delta (epoch {epoch}): {count} ops",
                        standby.unit, standby.shard
                    )
                },
            ),
            DataEvent::Verified {
                standby,
                epoch,
                version,
            } => (
                "data",
                format!(
                    "STANDBY {} of shard {} verified in sync at version {version} (epoch {epoch}): digests match",
                    standby.unit, standby.shard
                ),
            ),
            DataEvent::DigestMismatch { standby, version } => (
                "data",
                format!(
                    "STANDBY {} of shard {}: digest mismatch at version {version}; transferring again",
                    standby.unit, standby.shard
                ),
            ),
            DataEvent::Lagging { standby, behind } => (
                "data",
                format!(
                    "STANDBY {} of shard {} lags {behind} ops behind; taken out of sync",
                    standby.unit, standby.shard
                ),
            ),
            DataEvent::ItemRefused { standby, reason } => (
                "data",
                format!(
                    "STANDBY {} of shard {} refused a replication item ({reason}); asks for a full transfer",
                    standby.unit, standby.shard
                ),
            ),
            DataEvent::Dropped {
                shard,
                count,
                reason,
            } => (
                "data",
                format!("shard {shard}: {count} stream messages dropped: {reason}"),
            ),
        };
        tracing::info!(kind, "{text}");
        self.events.push(kind, text, 0);
    }

    /// Records `event` in the node's event log (`tandemctl events`), and logs it: at INFO on
    /// the leader and when it concerns this node, at DEBUG otherwise. Every daemon applies
    /// every committed event; a role change of another node's unit would otherwise be written
    /// to every node's log (10,000 shards starting: 20,000 lines on each of them).
    fn log_event(&self, event: &NodeEvent) {
        let index = match event {
            NodeEvent::Model { index, .. } => *index,
            _ => 0,
        };
        let text = event.to_string();
        if self.concerns_this_node(event) {
            tracing::info!(kind = event.kind(), index, "{text}");
        } else {
            tracing::debug!(kind = event.kind(), index, "{text}");
        }
        self.events.push(event.kind(), text, index);
    }

    /// Whether `event` is this node's to log at INFO (see [`Daemon::log_event`]).
    fn concerns_this_node(&self, event: &NodeEvent) -> bool {
        if self.node.is_leader() {
            return true;
        }
        let state = self.node.state();
        let here = |unit: &tandem_core::UnitName| {
            state
                .units
                .get(unit)
                .is_some_and(|record| record.node == self.node.id())
        };
        match event {
            NodeEvent::Model {
                event: tandem_core::ModelEvent::RoleChanged { unit, .. },
                ..
            } => here(unit),
            NodeEvent::Model {
                event:
                    tandem_core::ModelEvent::InSyncChanged { shard, .. }
                    | tandem_core::ModelEvent::HandoverStarted { shard, .. }
                    | tandem_core::ModelEvent::HandoverEnded { shard, .. },
                ..
            } => state
                .shards
                .get(shard)
                .is_some_and(|record| record.roles.keys().any(here)),
            _ => true,
        }
    }

    fn answer_admin(&mut self, id: u64, answer: AdminResult) {
        let Some(pending) = self.pending_admin.remove(&id) else {
            return;
        };
        let response = match answer {
            Ok(done) if pending.noop => AdminResponse {
                kind: Some(admin_response::Kind::Noop(NoopReply {
                    index: done.index,
                    term: done.term,
                    leader: self.name.clone(),
                })),
            },
            Ok(done) => AdminResponse {
                kind: Some(admin_response::Kind::Done(OperationDone {
                    message: done.message,
                    index: done.index,
                    term: done.term,
                    leader: self.name.clone(),
                })),
            },
            Err(refusal) => error_response(refusal.code, refusal.message),
        };
        let _ = pending.reply.send(AdminOutcome::Reply(response));
    }

    /// Carries out one agent action with real processes and sockets.
    fn carry_out(&mut self, action: AgentAction) {
        let now = self.now();
        match action {
            AgentAction::Start {
                unit,
                service,
                generation,
                spec,
                reinitialise,
            } => {
                let cleanup = self
                    .node
                    .state()
                    .topology
                    .service(&service)
                    .and_then(|spec| {
                        spec.cleanup.clone().map(|cleanup| {
                            (cleanup, Duration::from_millis(spec.timeouts.cleanup_ms))
                        })
                    });
                let started = supervisor::new_token().and_then(|token| {
                    let pid = self.supervisor.start(
                        &unit,
                        &service,
                        generation,
                        &spec,
                        reinitialise,
                        &token,
                        cleanup,
                    )?;
                    Ok((pid, token))
                });
                let event = match started {
                    Ok((pid, token)) => {
                        tracing::info!(%unit, generation, pid, "unit started");
                        self.units.insert(
                            unit.clone(),
                            UnitConnection {
                                generation,
                                token,
                                service,
                                reinitialise,
                                channel: None,
                                restrictions: BTreeMap::new(),
                                restrictions_due: false,
                            },
                        );
                        UnitEvent::Started {
                            unit,
                            generation,
                            pid,
                        }
                    }
                    Err(error) => {
                        tracing::error!(%unit, generation, %error, program = ?spec.argv.first(), "unit could not be started");
                        UnitEvent::StartFailed {
                            unit,
                            generation,
                            error: error.to_string(),
                        }
                    }
                };
                self.node.on_unit(now, event);
                self.inputs_pending = true;
            }
            AgentAction::Stop {
                unit,
                generation,
                how,
            } => {
                // The SDK connection stays open: closing it would make the unit exit at once,
                // before its terminate command had a chance to stop it gracefully.
                if !self.supervisor.stop(&unit, generation, &how) {
                    tracing::debug!(%unit, generation, "stop: the process had already exited");
                }
            }
            AgentAction::Send {
                unit,
                generation,
                request,
                command,
            } => {
                let wire_assign =
                    |shard: ShardName, role: tandem_core::Role, epoch: u64| sdk::Assign {
                        shard: shard.0,
                        role: tandem_proto::state_wire::encode_role(Some(role)) as i32,
                        epoch,
                    };
                let kind = match command {
                    UnitCommand::Assign { shard, role, epoch } => {
                        sdk::request::Kind::Assign(wire_assign(shard, role, epoch))
                    }
                    UnitCommand::Batch(items) => sdk::request::Kind::Batch(sdk::AssignBatch {
                        assigns: items
                            .into_iter()
                            .filter_map(|item| match item {
                                UnitCommand::Assign { shard, role, epoch } => {
                                    Some(wire_assign(shard, role, epoch))
                                }
                                other => {
                                    debug_assert!(false, "a batch holds assignments: {other:?}");
                                    None
                                }
                            })
                            .collect(),
                    }),
                    UnitCommand::Quiesce { shard, epoch } => {
                        sdk::request::Kind::Quiesce(sdk::Quiesce {
                            shard: shard.0,
                            epoch,
                        })
                    }
                    UnitCommand::Remove { shard } => {
                        sdk::request::Kind::Remove(sdk::Remove { shard: shard.0 })
                    }
                    UnitCommand::Health => sdk::request::Kind::Health(sdk::Health {}),
                    UnitCommand::Reset => sdk::request::Kind::Reset(sdk::Reset {}),
                };
                self.send_to_unit(
                    &unit,
                    generation,
                    agent_to_unit::Kind::Request(sdk::Request {
                        id: request,
                        kind: Some(kind),
                    }),
                );
            }
            AgentAction::Lease {
                unit,
                generation,
                valid_until,
            } => {
                // `Time` is CLOCK_MONOTONIC (see `Daemon::now`), as the unit's deadline is.
                let valid_until_monotonic_ns = valid_until.map(|until| until.as_micros() * 1000);
                self.send_to_unit(
                    &unit,
                    generation,
                    agent_to_unit::Kind::Lease(sdk::Lease {
                        valid_until_monotonic_ns,
                    }),
                );
            }
            AgentAction::NodeRestart { spec } => {
                tracing::warn!(program = ?spec.argv.first(), "running the node-restart command (escalation L3)");
                self.supervisor.run_node_restart(&spec);
            }
        }
    }

    fn send_to_unit(&self, unit: &UnitName, generation: u64, kind: agent_to_unit::Kind) {
        let Some(channel) = self
            .units
            .get(unit)
            .filter(|connection| connection.generation == generation)
            .and_then(|connection| connection.channel.as_ref())
        else {
            return;
        };
        if channel.try_send(AgentToUnit { kind: Some(kind) }).is_err() {
            tracing::warn!(%unit, generation, "unit's queue is full or closed; message dropped");
        }
    }
}

/// The shard of `shards` a client key routes to: crc32 of the key, modulo their count (stable
/// across nodes, restarts and versions; changing a service's shard list re-routes keys).
pub fn shard_for(shards: &[ShardName], key: &[u8]) -> ShardName {
    let index = crc32fast::hash(key) as usize % shards.len().max(1);
    shards[index].clone()
}
