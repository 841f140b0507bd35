//! Peer transport: framed envelopes over TCP.
//!
//! Inbound, one task per accepted connection decodes frames and hands envelopes to the event
//! loop. Outbound, one task per peer owns a bounded queue and a connection that it re-opens
//! with capped backoff. Raft tolerates loss, so when a queue is full or the peer is away,
//! messages are dropped (and counted) rather than buffered without bound.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tandem_io::QuietStream;
use tandem_proto::frame::{message_frame, message_frame_parts, FrameDecoder, FrameParts};
use tandem_proto::peer::envelope::Body;
use tandem_proto::peer::Envelope;
use tandem_proto::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::event::{Event, EventSender};

/// Messages queued per peer before new ones are dropped.
pub const PEER_QUEUE_LEN_MAX: usize = 4096;
/// First reconnect delay; doubles up to [`RECONNECT_DELAY_MAX`].
const RECONNECT_DELAY_MIN: Duration = Duration::from_millis(5);
/// Longest reconnect delay, kept short so a restarted peer is reached again quickly.
const RECONNECT_DELAY_MAX: Duration = Duration::from_millis(200);
/// How long a connect may take on loopback before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// A message this long is encoded as gathered parts (its large values shared, not copied
/// into the frame) and written with one `sendmsg` of them rather than copied into the
/// coalescing buffer (a transfer chunk or a batch of large values: the copies would cost more
/// than the extra write).
const DIRECT_WRITE_MIN: usize = 64 * 1024;

/// One frame queued for a peer.
#[derive(Debug)]
enum Frame {
    /// A small frame, coalesced with the others queued.
    Whole(Bytes),
    /// A large frame as parts (see [`tandem_proto::frame::message_frame_parts`]).
    Parts(FrameParts),
}

impl Frame {
    fn len(&self) -> usize {
        match self {
            Self::Whole(bytes) => bytes.len(),
            Self::Parts(parts) => parts.len(),
        }
    }
}

/// Counters of the transport, for status and logs.
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Messages dropped because a peer's queue was full or it was unreachable.
    pub dropped: AtomicU64,
    /// Inbound connections closed because of a bad frame or envelope.
    pub bad_frames: AtomicU64,
}

/// Sending side: one bounded queue per peer.
#[derive(Debug, Clone)]
pub struct PeerSender {
    /// Queue of encoded frames per peer id.
    queues: BTreeMap<u64, mpsc::Sender<Frame>>,
    /// Shared counters.
    stats: Arc<TransportStats>,
}

impl PeerSender {
    /// Starts one outbound task per peer in `peers` (id → address).
    pub fn start(peers: BTreeMap<u64, SocketAddr>, stats: Arc<TransportStats>) -> Self {
        let mut queues = BTreeMap::new();
        for (id, addr) in peers {
            let (sender, receiver) = mpsc::channel(PEER_QUEUE_LEN_MAX);
            tokio::spawn(outbound(id, addr, receiver, stats.clone()));
            queues.insert(id, sender);
        }
        Self { queues, stats }
    }

    /// Queues an envelope for its `to` node. Returns false if it was dropped.
    pub fn send(&self, envelope: &Envelope) -> bool {
        let Some(queue) = self.queues.get(&envelope.to) else {
            tracing::warn!(to = envelope.to, "message for an unknown node dropped");
            return false;
        };
        let frame = if envelope.encoded_len() >= DIRECT_WRITE_MIN {
            Frame::Parts(message_frame_parts(envelope))
        } else {
            Frame::Whole(message_frame(envelope).freeze())
        };
        if queue.try_send(frame).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

async fn outbound(
    id: u64,
    addr: SocketAddr,
    mut queue: mpsc::Receiver<Frame>,
    stats: Arc<TransportStats>,
) {
    let mut delay = RECONNECT_DELAY_MIN;
    let mut warned = false;
    loop {
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                if !warned {
                    tracing::info!(peer = id, %addr, %error, "peer unreachable; will keep retrying");
                    warned = true;
                }
                // While the peer is away, what is queued is stale: drop it instead of
                // delivering a burst of old messages later.
                while let Ok(_stale) = queue.try_recv() {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RECONNECT_DELAY_MAX);
                if queue.is_closed() {
                    return;
                }
                continue;
            }
            Err(_elapsed) => continue,
        };
        let _ = stream.set_nodelay(true);
        if warned {
            tracing::info!(peer = id, %addr, "peer reachable again");
        }
        warned = false;
        delay = RECONNECT_DELAY_MIN;
        // Readable events only: the peer's acknowledgements of what this task writes never
        // wake the daemon (see `tandem_io`).
        let stream = match stream.into_std().and_then(QuietStream::new) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(peer = id, %error, "could not register the peer connection");
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        let (mut read, mut write) = stream.into_split();
        let mut batch = BytesMut::new();
        let mut probe = [0u8; 1];
        loop {
            // The peer never writes on this connection, so a read that completes means it
            // closed (its daemon died or restarted): reconnect now rather than lose the next
            // message into a dead socket. A follower rarely writes to another follower, so
            // without this its first vote answer after a restart would be lost.
            let frame = tokio::select! {
                frame = queue.recv() => frame,
                _closed = read.read(&mut probe) => {
                    tracing::debug!(peer = id, "peer closed the connection; reconnecting");
                    break;
                }
            };
            let Some(frame) = frame else {
                return;
            };
            // Coalesce whatever else is already queued, in order, into as few writes as
            // there are large frames (a large frame goes out as it is, not copied again).
            let mut taken = 0;
            let mut next = Some(frame);
            let written: std::io::Result<()> = async {
                while let Some(frame) = next.take() {
                    taken += frame.len();
                    match frame {
                        Frame::Parts(parts) => {
                            if !batch.is_empty() {
                                write.write_all(&batch).await?;
                                batch.clear();
                            }
                            tandem_io::write_all_parts(&mut write, parts.parts()).await?;
                        }
                        Frame::Whole(frame) => batch.extend_from_slice(&frame),
                    }
                    if taken < tandem_proto::frame::COALESCE_BYTES_MAX {
                        next = queue.try_recv().ok();
                    }
                }
                if !batch.is_empty() {
                    write.write_all(&batch).await?;
                    batch.clear();
                }
                Ok(())
            }
            .await;
            if let Err(error) = written {
                tracing::debug!(peer = id, %error, "peer connection lost");
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
}

/// Accepts peer connections and feeds decoded envelopes to the event loop.
pub async fn serve_peers(
    listener: TcpListener,
    cluster: String,
    self_id: u64,
    frame_len_max: usize,
    events: EventSender,
    stats: Arc<TransportStats>,
) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting a peer connection failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let events = events.clone();
        let cluster = cluster.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            if let Err(reason) = read_peer(stream, &cluster, self_id, frame_len_max, &events).await
            {
                stats.bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%remote, %reason, "peer connection dropped");
            }
        });
    }
}

/// Reads one inbound connection until it ends. When a connection that carried control
/// messages (Raft, heartbeats, grants) is closed by the peer, the loop hears of it
/// ([`Event::PeerLinkLost`]) after everything read from it: a killed daemon's connections are
/// closed by its kernel at once, which lets the cluster act before a whole node timeout. A
/// connection this side drops (a bad frame) is not reported: the peer is alive.
async fn read_peer(
    mut stream: TcpStream,
    cluster: &str,
    self_id: u64,
    frame_len_max: usize,
    events: &EventSender,
) -> Result<(), String> {
    let decoder = FrameDecoder::new(frame_len_max);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // The peer, once a control message came on this connection.
    let mut control_from = None;
    loop {
        while let Some(payload) = decoder.decode(&mut buf).map_err(|e| e.to_string())? {
            let envelope = tandem_proto::decode_envelope(payload).map_err(|e| e.to_string())?;
            if envelope.cluster != cluster {
                return Err(format!(
                    "frame from cluster {:?}, this is {:?}",
                    envelope.cluster, cluster
                ));
            }
            if envelope.to != self_id {
                return Err(format!(
                    "frame for node {}, this is node {self_id}",
                    envelope.to
                ));
            }
            if !matches!(envelope.body, Some(Body::Data(_))) {
                control_from = Some(envelope.from);
            }
            if events.send(Event::Peer(envelope)).await.is_err() {
                return Ok(());
            }
        }
        let closed = match stream.read_buf(&mut buf).await {
            Ok(0) => true,
            Ok(_) => false,
            Err(error) => {
                tracing::debug!(%error, "peer connection failed");
                true
            }
        };
        if closed {
            if let Some(from) = control_from {
                let _ = events.send(Event::PeerLinkLost(from)).await;
            }
            return Ok(());
        }
    }
}
