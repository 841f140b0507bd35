//! One tandem node's whole logic, sans-IO.
//!
//! A [`Node`] joins the Raft replica (`tandem-raft`) with the decisions of `tandem-core`: the
//! leader's liveness tracker, quorum clock and director, and the node's agent with its lease.
//! It takes inputs (ticks, timers, peer messages, what happened to unit processes, admin
//! requests), each with the local time, and returns outputs (messages to peers, actions on
//! units, events, admin answers). The daemon drives it with sockets, processes and a real
//! clock; the simulation drives the very same code with simulated ones.

pub mod admin;
pub use tandem_proto::data_wire;
pub mod node;
pub mod observe;
pub mod replica_books;
pub mod replica_file;
pub mod wire;

pub use admin::{AdminAction, AdminDone, AdminResult};
pub use node::{
    DataRound, DataStepEnd, DataStepStart, MovedShards, Node, NodeError, NodeOutput, NodeSettings,
};
pub use observe::{NodeEvent, Observed};
pub use replica_books::{CompactionPolicy, FileOp, Installed, ReplicaBooks, Synced};

use tandem_core::{AgentReport, Severity, Time, UnitName};
use tandem_raft::RaftMessage;

/// What nodes send each other.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerMessage {
    /// A raft-rs message.
    Raft(RaftMessage),
    /// An agent's heartbeat to the leader: liveness, a lease request and its report.
    Heartbeat(Heartbeat),
    /// The leader's grant of a lease, answering a heartbeat.
    Grant(Grant),
    /// An agent's report, sent at once because something changed.
    Report(AgentReport),
}

/// An agent's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// Sender's Raft term.
    pub term: u64,
    /// Sender's commit index.
    pub commit_index: u64,
    /// Sender's applied index.
    pub applied_index: u64,
    /// Sender's clock when it sent this; echoed in the grant.
    pub sent_at: Time,
    /// Sender's units.
    pub report: AgentReport,
}

/// A lease grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The heartbeat's `sent_at`, echoed.
    pub sent_at: Time,
    /// The leader's last log index when it granted.
    pub floor: u64,
    /// The leader's term.
    pub term: u64,
    /// How much shorter than a whole lease it is (its quorum confirmation was that much
    /// older than the freshness window; see `tandem_core::QuorumClock::grant`).
    pub shortened_by: std::time::Duration,
}

/// Something that happened to one of this node's unit processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitEvent {
    /// The process started.
    Started {
        /// The unit.
        unit: UnitName,
        /// The instance.
        generation: u64,
        /// Its pid.
        pid: u32,
    },
    /// The process could not be started.
    StartFailed {
        /// The unit.
        unit: UnitName,
        /// The instance.
        generation: u64,
        /// Why.
        error: String,
    },
    /// The process exited.
    Exited {
        /// The unit.
        unit: UnitName,
        /// The instance.
        generation: u64,
        /// Exit code, if it exited.
        code: Option<i32>,
        /// Signal, if one killed it.
        signal: Option<i32>,
    },
    /// The unit's SDK connection closed.
    Disconnected {
        /// The unit.
        unit: UnitName,
        /// The instance.
        generation: u64,
    },
    /// The unit answered a request.
    Reply {
        /// The unit.
        unit: UnitName,
        /// The instance.
        generation: u64,
        /// The request.
        request: u64,
        /// `Ok`, or the hook's error message.
        result: Result<(), String>,
    },
    /// The unit reported a fault.
    Fault {
        /// The unit.
        unit: UnitName,
        /// The instance.
        generation: u64,
        /// How bad.
        severity: Severity,
    },
    /// The unit's lease ran out and it quiesced these shards by itself.
    Fenced {
        /// The unit.
        unit: UnitName,
        /// The instance.
        generation: u64,
        /// The shards it stopped acting for.
        shards: Vec<tandem_core::ShardName>,
    },
    /// The unit reported its load.
    Load {
        /// The unit.
        unit: UnitName,
        /// The instance.
        generation: u64,
        /// The figure (the unit's own scale, e.g. percent).
        load: u32,
    },
}
