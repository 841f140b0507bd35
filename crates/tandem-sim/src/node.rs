//! One simulated node: its disk (which outlives crashes), its [`tandem_node::Node`] (which does
//! not), its clock drift and, while it is paused, the inputs waiting for it.

use tandem_core::data::DataRequest;
use tandem_core::{Time, UnitName};
use tandem_node::{Node, UnitEvent};

use crate::disk::SimDisk;
use crate::net::Wire;
use crate::replica_files::ReplicaFiles;

/// Whether a node runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Ticking and handling messages.
    Running,
    /// Stopped like a process under SIGSTOP or a long GC pause: no ticks, and inputs wait in
    /// its inbox (as in its socket buffers) until it resumes. Its units keep running.
    Paused,
    /// Down: its memory is gone, only its disk remains. Its units died with it.
    Crashed,
}

/// Most inputs a paused node queues; later ones are dropped, like a full socket buffer.
pub const INBOX_LEN_MAX: usize = 1024;

/// An input that waits while the node is paused.
#[derive(Debug, Clone)]
pub enum Inbound {
    /// A peer message.
    Peer(u64, Wire),
    /// The connection a peer sends on closed (the daemon's `transport` reports it after what
    /// the connection carried; here it may also overtake messages still in flight).
    LinkLost(u64),
    /// Something from one of its units.
    Unit(UnitEvent),
    /// A unit registering through the SDK.
    Register(UnitName, u64),
    /// A unit's data request (checkpoint, stream).
    Data {
        /// The unit.
        unit: UnitName,
        /// Its instance.
        generation: u64,
        /// The request's id.
        request: u64,
        /// What it asks.
        body: DataRequest,
    },
}

/// A simulated node.
#[derive(Debug)]
pub struct SimNode {
    /// Raft id (1-based).
    pub id: u64,
    /// The disk; survives crashes.
    pub disk: SimDisk,
    /// The node while it runs or is paused; dropped by a crash.
    pub node: Option<Node<SimDisk>>,
    /// Running, paused or crashed.
    pub status: Status,
    /// Bumped on every crash, pause, resume and restart; a timer event that carries an older
    /// epoch belongs to a previous life of the node and is ignored.
    pub epoch: u64,
    /// Bumped on every crash: unit events of an older life are dropped.
    pub life: u64,
    /// How many times it was restarted (mixed into its election seed).
    pub restarts: u64,
    /// Clock drift in parts per million: its local clock runs at `1 + drift` times real time.
    pub drift_ppm: i64,
    /// Inputs that arrived while paused, in arrival order.
    pub inbox: Vec<Inbound>,
    /// A [`Pass`](crate::sim) over data calls taken in is scheduled (batched intake).
    pub pass_due: bool,
    /// When the disk was armed to crash during a write (it crashes anyway after a while).
    pub armed_at: Option<u64>,
    /// Snapshot index last seen, to count the snapshots the node takes.
    pub snapshot_index: u64,
    /// Its replica files; survive crashes.
    pub files: ReplicaFiles,
    /// Whether its Raft log fsyncs run apart from its drives, as in tandemd (completed by a
    /// later event), rather than inside them.
    pub deferred_sync: bool,
    /// The Raft log fsync under way, when deferred; dropped by a crash.
    pub raft_sync: Option<tandem_raft::SyncJob<crate::disk::SimFile>>,
}

impl SimNode {
    /// The node's local clock at simulated time `now_us`.
    pub fn local_now(&self, now_us: u64) -> Time {
        let scaled = i128::from(now_us) * (1_000_000 + i128::from(self.drift_ppm)) / 1_000_000;
        Time::from_micros(scaled as u64)
    }

    /// How much simulated time `local_us` of the node's clock take.
    pub fn real_duration(&self, local_us: u64) -> u64 {
        let scaled = i128::from(local_us) * 1_000_000 / (1_000_000 + i128::from(self.drift_ppm));
        scaled as u64
    }

    /// The node; the caller knows it is not crashed.
    pub fn node(&mut self) -> &mut Node<SimDisk> {
        self.node
            .as_mut()
            .expect("a node that is not crashed has its Node")
    }
}
