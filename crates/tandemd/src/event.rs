//! What the daemon's tasks and threads tell the event loop: the closed [`Event`] enum, with the
//! payload types it carries ([`AdminOutcome`], [`Registration`]), and the [`EventSender`] of
//! its two queues (control first, then data). Every other module of the daemon imports this
//! one; it imports none of them but the replica files' [`DiskReport`].

use std::net::SocketAddr;

use tandem_core::data::DataRequest;
use tandem_core::ShardName;
use tandem_core::UnitName;
use tandem_node::UnitEvent;
use tandem_proto::admin::{AdminRequest, AdminResponse};
use tandem_proto::peer::envelope::Body;
use tandem_proto::peer::Envelope;
use tandem_proto::sdk::{self, AgentToUnit};
use tokio::sync::{mpsc, oneshot};

use crate::replicas::DiskReport;

/// Capacity of each event queue; a full queue slows readers down (backpressure).
const EVENT_QUEUE_LEN_MAX: usize = 8192;

/// Events the loop consumes, besides its timers.
#[derive(Debug)]
pub enum Event {
    /// An envelope from a peer (already checked for cluster name and destination).
    Peer(Envelope),
    /// The peer closed a connection that carried its control messages to this node, after
    /// every envelope read from it (see `transport::read_peer`).
    PeerLinkLost(u64),
    /// An admin request and where to send its outcome.
    Admin {
        /// The request.
        request: AdminRequest,
        /// Where the outcome goes.
        reply: oneshot::Sender<AdminOutcome>,
    },
    /// Something happened to a unit process (from the supervisor or the SDK endpoint).
    Unit(UnitEvent),
    /// A unit registers through the SDK.
    Register(Registration),
    /// A datagram (or a TCP frame) arrived on a shard's ingress address.
    Ingress {
        /// The shard.
        shard: ShardName,
        /// The message.
        payload: Vec<u8>,
        /// Its sender.
        peer: SocketAddr,
        /// It came on a TCP connection.
        tcp: bool,
    },
    /// A unit's reply to an ingress message's sender.
    IngressReply {
        /// The shard whose ingress address it leaves from.
        shard: ShardName,
        /// The original sender.
        peer: SocketAddr,
        /// The reply.
        payload: Vec<u8>,
        /// On the sender's TCP connection.
        tcp: bool,
    },
    /// A unit's checkpoint or stream call.
    UnitData {
        /// The unit.
        unit: UnitName,
        /// Its instance.
        generation: u64,
        /// The call's id, echoed in the answer.
        id: u64,
        /// The call.
        request: DataRequest,
    },
    /// The replica sync thread made replica versions durable or wrote a compacted file (or
    /// failed).
    ReplicaDisk(Result<DiskReport, String>),
    /// The Raft log sync thread made the log durable up to a ready number (or failed).
    RaftSynced(Result<u64, String>),
}

impl Event {
    /// About how many bytes of values and messages a data event carries (0 for the rest).
    pub(crate) fn payload_len(&self) -> usize {
        match self {
            Event::Peer(envelope) => match &envelope.body {
                Some(Body::Data(message)) => tandem_proto::Message::encoded_len(message),
                _ => 0,
            },
            Event::UnitData {
                request: DataRequest::Commit { writes, .. },
                ..
            } => tandem_core::data::writes_bytes(writes),
            Event::Ingress { payload, .. } | Event::IngressReply { payload, .. } => payload.len(),
            _ => 0,
        }
    }

    /// Whether the event belongs to the data plane (replication, checkpoint calls, stream
    /// messages, replica syncs). Those queue apart from the control events (Raft, heartbeats,
    /// leases, admin, unit lifecycle), which the loop always takes first: a burst of data never
    /// delays a heartbeat long enough to cost a lease.
    pub(crate) fn is_data(&self) -> bool {
        match self {
            Event::Peer(envelope) => matches!(envelope.body, Some(Body::Data(_))),
            Event::UnitData { .. }
            | Event::Ingress { .. }
            | Event::IngressReply { .. }
            | Event::ReplicaDisk(_) => true,
            Event::Admin { .. }
            | Event::Unit(_)
            | Event::Register(_)
            | Event::RaftSynced(_)
            | Event::PeerLinkLost(_) => false,
        }
    }
}

/// Where the daemon's tasks and threads hand events to the loop: one bounded queue for control
/// events and one for data events (see [`Event::is_data`]).
#[derive(Debug, Clone)]
pub struct EventSender {
    control: mpsc::Sender<Event>,
    data: mpsc::Sender<Event>,
}

/// The queue was closed: the loop is gone.
#[derive(Debug)]
pub struct LoopGone;

impl EventSender {
    /// Makes the two queues; the receivers are `(control, data)`.
    pub fn new() -> (Self, mpsc::Receiver<Event>, mpsc::Receiver<Event>) {
        let (control, control_rx) = mpsc::channel(EVENT_QUEUE_LEN_MAX);
        let (data, data_rx) = mpsc::channel(EVENT_QUEUE_LEN_MAX);
        (Self { control, data }, control_rx, data_rx)
    }

    fn queue(&self, event: &Event) -> &mpsc::Sender<Event> {
        if event.is_data() {
            &self.data
        } else {
            &self.control
        }
    }

    /// Queues `event`, waiting while its queue is full (backpressure on the reader).
    pub async fn send(&self, event: Event) -> Result<(), LoopGone> {
        self.queue(&event).send(event).await.map_err(|_| LoopGone)
    }

    /// Queues `event` from a thread outside the runtime.
    pub fn blocking_send(&self, event: Event) -> Result<(), LoopGone> {
        self.queue(&event)
            .blocking_send(event)
            .map_err(|_| LoopGone)
    }
}

/// How the event loop disposes of an admin request.
#[derive(Debug)]
pub enum AdminOutcome {
    /// The answer.
    Reply(AdminResponse),
    /// Ask the leader at this address instead; if that fails, use the fallback answer.
    Forward {
        /// The leader's admin address.
        leader: SocketAddr,
        /// What to answer if the leader cannot be reached; `None`: ask the event loop again,
        /// marked `forwarded`, for this node's own answer (a status, built only if needed).
        fallback: Option<AdminResponse>,
    },
}

/// What a registration needs from the event loop.
#[derive(Debug)]
pub struct Registration {
    /// The unit.
    pub unit: UnitName,
    /// The instance.
    pub generation: u64,
    /// Its proof of identity.
    pub token: String,
    /// Where messages for the unit go.
    pub channel: mpsc::Sender<AgentToUnit>,
    /// The answer: a welcome, or why not.
    pub reply: oneshot::Sender<Result<sdk::Welcome, String>>,
}
