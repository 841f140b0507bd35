//! The daemon's event loop: one task owns the replica and the liveness tracker and consumes a
//! closed set of events (peer messages, admin requests) plus two timers (raft tick, heartbeat).
//! Everything that makes the daemon act passes through [`Daemon::handle`] or a timer arm.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tandem_core::{Command, LivenessConfig, LivenessTracker, NodeId, NodeReport, Time};
use tandem_proto::admin::{
    admin_request, admin_response, AdminRequest, AdminResponse, NodeStatus, NoopReply, Status,
};
use tandem_proto::peer::{envelope, Envelope, Heartbeat};
use tandem_raft::disk::FsDisk;
use tandem_raft::{Replica, ReplicaConfig, WalOptions};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::admin::{error_response, serve_admin, AdminOutcome};
use crate::config::Config;
use crate::transport::{serve_peers, PeerSender, TransportStats};

/// Events the loop consumes, besides its timers.
#[derive(Debug)]
pub enum Event {
    /// An envelope from a peer (already checked for cluster name and destination).
    Peer(Envelope),
    /// An admin request and where to send its outcome.
    Admin {
        /// The request.
        request: AdminRequest,
        /// Where the outcome goes.
        reply: oneshot::Sender<AdminOutcome>,
    },
}

/// Capacity of the event queue; a full queue slows readers down (backpressure).
const EVENT_QUEUE_LEN_MAX: usize = 8192;
/// Events handled per wake-up before the replica's output is processed.
const EVENT_BATCH_MAX: usize = 512;

/// The state the event loop owns.
struct Daemon {
    /// The whole configuration.
    config: Config,
    /// This node's name.
    name: String,
    /// This node's raft id.
    id: u64,
    /// Raft replica and applied model.
    replica: Replica<FsDisk>,
    /// Outbound peer queues.
    peers: PeerSender,
    /// Liveness tracker, present while this node is the leader.
    liveness: Option<LivenessTracker>,
    /// No-op requests waiting for their entry to apply, by request id.
    pending_noops: BTreeMap<u64, oneshot::Sender<AdminOutcome>>,
    /// Next request id.
    next_request_id: u64,
    /// Origin of the monotonic `Time` handed to the core.
    started: Instant,
    /// The leader last seen, to log changes.
    last_leader: Option<u64>,
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
    let replica_config = ReplicaConfig {
        id: node.id,
        voters: config.voter_ids(),
        learners: config.learner_ids(),
        heartbeat_ticks: cluster.raft_heartbeat_ticks,
        election_ticks: cluster.raft_election_ticks,
        snapshot_interval_entries: cluster.snapshot_interval_entries,
        election_seed: entropy(node.id),
        wal: WalOptions::default(),
    };
    let logger = tandem_raft::logging::raft_logger(node.id);
    let replica = Replica::open(&replica_config, disk, &logger).context("open raft log")?;
    let recovery = replica.recovery().clone();
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
        term = replica.term(),
        commit = replica.commit_index(),
        "tandemd starting"
    );
    tracing::warn!("no TLS configured: peer and admin endpoints accept loopback addresses only");

    let peer_listener = TcpListener::bind(node.peer_addr)
        .await
        .with_context(|| format!("bind peer address {}", node.peer_addr))?;
    let admin_listener = TcpListener::bind(node.admin_addr)
        .await
        .with_context(|| format!("bind admin address {}", node.admin_addr))?;

    let stats = Arc::new(TransportStats::default());
    let peer_addrs: BTreeMap<u64, SocketAddr> = config
        .nodes
        .iter()
        .filter(|peer| peer.id != node.id)
        .map(|peer| (peer.id, peer.peer_addr))
        .collect();
    let peers = PeerSender::start(peer_addrs, stats.clone());
    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE_LEN_MAX);
    tokio::spawn(serve_peers(
        peer_listener,
        cluster.name.clone(),
        node.id,
        cluster.frame_len_max,
        events_tx.clone(),
        stats.clone(),
    ));
    tokio::spawn(serve_admin(
        admin_listener,
        cluster.frame_len_max,
        Duration::from_millis(cluster.admin_timeout_ms),
        events_tx,
    ));

    let mut tick = tokio::time::interval(Duration::from_millis(cluster.raft_tick_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeat = tokio::time::interval(Duration::from_millis(cluster.heartbeat_interval_ms));
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let mut daemon = Daemon {
        name: node.name.clone(),
        id: node.id,
        config,
        replica,
        peers,
        liveness: None,
        pending_noops: BTreeMap::new(),
        next_request_id: 1,
        started: Instant::now(),
        last_leader: None,
        _lock: lock,
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => daemon.replica.tick(),
            _ = heartbeat.tick() => daemon.on_heartbeat_timer(),
            event = events.recv() => {
                let Some(event) = event else { break };
                daemon.handle(event);
                for _ in 1..EVENT_BATCH_MAX {
                    match events.try_recv() {
                        Ok(event) => daemon.handle(event),
                        Err(_) => break,
                    }
                }
            }
        }
        daemon.drive()?;
    }
    tracing::info!(node = %daemon.name, "tandemd stopping");
    Ok(())
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

/// A seed for election timeouts that differs between nodes and restarts.
fn entropy(node_id: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32) ^ node_id.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

impl Daemon {
    fn now(&self) -> Time {
        Time::from_micros(self.started.elapsed().as_micros() as u64)
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Peer(envelope) => self.on_peer(envelope),
            Event::Admin { request, reply } => {
                if let Some(outcome) = self.on_admin(request, reply) {
                    let _ = outcome.0.send(outcome.1);
                }
            }
        }
    }

    fn on_peer(&mut self, envelope: Envelope) {
        match envelope.body {
            Some(envelope::Body::Raft(bytes)) => match tandem_raft::decode_raft_message(&bytes) {
                Ok(message) => {
                    if let Err(error) = self.replica.step(message) {
                        tracing::debug!(from = envelope.from, %error, "raft refused a message");
                    }
                }
                Err(error) => {
                    tracing::warn!(from = envelope.from, %error, "undecodable raft message dropped")
                }
            },
            Some(envelope::Body::Heartbeat(heartbeat)) => {
                let now = self.now();
                if let Some(tracker) = &mut self.liveness {
                    tracker.observe(
                        now,
                        NodeId(envelope.from),
                        NodeReport {
                            term: heartbeat.term,
                            commit_index: heartbeat.commit_index,
                            applied_index: heartbeat.applied_index,
                        },
                    );
                }
            }
            None => tracing::warn!(from = envelope.from, "empty peer envelope dropped"),
        }
    }

    /// Handles an admin request; returns the reply to send now, or keeps it for later.
    #[allow(clippy::type_complexity)] // a (sender, outcome) pair is clearer here than a new type
    fn on_admin(
        &mut self,
        request: AdminRequest,
        reply: oneshot::Sender<AdminOutcome>,
    ) -> Option<(oneshot::Sender<AdminOutcome>, AdminOutcome)> {
        let leader_addr = self
            .replica
            .leader_id()
            .filter(|leader| *leader != self.id)
            .and_then(|leader| self.config.node_by_id(leader))
            .map(|leader| leader.admin_addr);
        let may_forward = !request.forwarded;
        match request.kind {
            Some(admin_request::Kind::Status(_)) => {
                let own = self.status_response();
                let outcome = match leader_addr {
                    Some(leader) if may_forward && !self.replica.is_leader() => {
                        AdminOutcome::Forward {
                            leader,
                            fallback: own,
                        }
                    }
                    _ => AdminOutcome::Reply(own),
                };
                Some((reply, outcome))
            }
            Some(admin_request::Kind::Noop(_)) => {
                if self.replica.is_leader() {
                    let id = self.next_request_id;
                    self.next_request_id += 1;
                    let command = Command::Noop { nonce: id };
                    match self.replica.propose(&command, id.to_be_bytes().to_vec()) {
                        Ok(()) => {
                            self.pending_noops.insert(id, reply);
                            None
                        }
                        Err(error) => Some((
                            reply,
                            AdminOutcome::Reply(error_response(
                                "not_committed",
                                format!("proposal refused: {error}; retry"),
                            )),
                        )),
                    }
                } else {
                    let no_leader = error_response(
                        "no_leader",
                        format!(
                            "{} knows no reachable leader; a majority of voters must be up and connected",
                            self.name
                        ),
                    );
                    let outcome = match leader_addr {
                        Some(leader) if may_forward => AdminOutcome::Forward {
                            leader,
                            fallback: no_leader,
                        },
                        _ => AdminOutcome::Reply(no_leader),
                    };
                    Some((reply, outcome))
                }
            }
            None => Some((
                reply,
                AdminOutcome::Reply(error_response(
                    "bad_request",
                    "empty admin request (client newer than this daemon?)",
                )),
            )),
        }
    }

    fn on_heartbeat_timer(&mut self) {
        let now = self.now();
        if let Some(tracker) = &mut self.liveness {
            for command in tracker.decide(now, self.replica.state()) {
                tracing::info!(?command, "proposing a liveness verdict");
                if let Err(error) = self.replica.propose(&command, Vec::new()) {
                    tracing::debug!(%error, "liveness proposal refused");
                }
            }
            return;
        }
        if let Some(leader) = self.replica.leader_id() {
            let heartbeat = Envelope {
                cluster: self.config.cluster.name.clone(),
                from: self.id,
                to: leader,
                body: Some(envelope::Body::Heartbeat(Heartbeat {
                    term: self.replica.term(),
                    commit_index: self.replica.commit_index(),
                    applied_index: self.replica.applied_index(),
                })),
            };
            self.peers.send(&heartbeat);
        }
    }

    /// Runs the replica's ready loop: durable writes, sends, applies; follows leadership changes.
    fn drive(&mut self) -> anyhow::Result<()> {
        let output = self
            .replica
            .process_ready()
            .context("raft storage failed; stopping to protect the log")?;
        for message in output.messages {
            let envelope = Envelope {
                cluster: self.config.cluster.name.clone(),
                from: self.id,
                to: message.to,
                body: Some(envelope::Body::Raft(tandem_raft::encode_raft_message(
                    &message,
                ))),
            };
            self.peers.send(&envelope);
        }
        for applied in output.applied {
            if let Ok(context) = <[u8; 8]>::try_from(applied.context.as_slice()) {
                let id = u64::from_be_bytes(context);
                if let Some(reply) = self.pending_noops.remove(&id) {
                    let response = AdminResponse {
                        kind: Some(admin_response::Kind::Noop(NoopReply {
                            index: applied.index,
                            term: applied.term,
                            leader: self.name.clone(),
                        })),
                    };
                    let _ = reply.send(AdminOutcome::Reply(response));
                }
            }
            if let Some(command @ Command::SetNodeLiveness { .. }) = &applied.command {
                tracing::info!(index = applied.index, ?command, outcome = ?applied.outcome, "applied");
            }
        }
        self.follow_leadership();
        Ok(())
    }

    fn follow_leadership(&mut self) {
        let leader = self.replica.leader_id();
        if leader != self.last_leader {
            let name = leader
                .and_then(|id| self.config.node_by_id(id))
                .map_or("none", |node| node.name.as_str());
            tracing::info!(term = self.replica.term(), leader = name, "leader changed");
            self.last_leader = leader;
        }
        let is_leader = self.replica.is_leader();
        if is_leader && self.liveness.is_none() {
            let members = self.config.nodes.iter().map(|node| NodeId(node.id));
            self.liveness = Some(LivenessTracker::new(
                LivenessConfig {
                    node_timeout: Duration::from_millis(self.config.cluster.node_timeout_ms),
                },
                NodeId(self.id),
                members,
                self.now(),
            ));
        } else if !is_leader && self.liveness.is_some() {
            self.liveness = None;
            // Proposals of a deposed leader may never commit; their callers are told to retry.
            self.pending_noops.clear();
        }
    }

    fn status_response(&self) -> AdminResponse {
        let now = self.now();
        let replica = &self.replica;
        let leader_id = replica.leader_id();
        let nodes = self
            .config
            .nodes
            .iter()
            .map(|node| {
                let mut status = NodeStatus {
                    name: node.name.clone(),
                    id: node.id,
                    up: replica.state().is_up(NodeId(node.id)),
                    leader: leader_id == Some(node.id),
                    peer_addr: node.peer_addr.to_string(),
                    admin_addr: node.admin_addr.to_string(),
                    membership: if replica.is_voter(node.id) {
                        "voter"
                    } else {
                        "learner"
                    }
                    .to_owned(),
                    match_index: replica.match_index(node.id).unwrap_or(0),
                    ..Default::default()
                };
                if node.id == self.id {
                    status.term = replica.term();
                    status.commit_index = replica.commit_index();
                    status.applied_index = replica.applied_index();
                    status.match_index = replica.match_index(node.id).unwrap_or(0);
                } else if let Some(tracker) = &self.liveness {
                    if let Some(report) = tracker.report(NodeId(node.id)) {
                        status.term = report.term;
                        status.commit_index = report.commit_index;
                        status.applied_index = report.applied_index;
                    }
                    status.heartbeat_age_ms = tracker
                        .heartbeat_age(now, NodeId(node.id))
                        .map(|age| age.as_millis() as u64);
                }
                status
            })
            .collect();
        AdminResponse {
            kind: Some(admin_response::Kind::Status(Status {
                cluster: self.config.cluster.name.clone(),
                answered_by: self.name.clone(),
                leader: leader_id
                    .and_then(|id| self.config.node_by_id(id))
                    .map(|node| node.name.clone())
                    .unwrap_or_default(),
                term: replica.term(),
                commit_index: replica.commit_index(),
                applied_index: replica.applied_index(),
                nodes,
                from_leader: replica.is_leader(),
            })),
        }
    }
}
