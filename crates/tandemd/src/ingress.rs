//! Ingress: the UDP and TCP addresses of a shard follow its ACTIVE. The node that hosts the
//! shard's primary binds them; every datagram (UDP) or frame (TCP: a u32 big-endian length,
//! then the message) that arrives is appended to the shard's stream (replicated before the
//! ACTIVE sees it), and replies the unit sends through the SDK leave from the same socket (UDP)
//! or go back on the sender's connection, framed the same way (TCP), so the sender sees one
//! address whatever node serves it. A TCP connection lives on one node: when the node stops
//! being the primary it closes its connections and stops listening at once, and the client
//! connects again (to the same address, now served by the new primary's node).
//!
//! A node that stops being the primary keeps the socket a short grace period
//! ([`RELEASE_GRACE`]) so that the new primary's node can bind the same address meanwhile
//! (`SO_REUSEPORT`): what still reaches the old node is handed to its data plane, which forwards
//! it to the new primary or holds it, instead of being refused by the kernel. When the grace
//! period ends the old socket stops taking new datagrams and hands over those it queued before
//! it closes (see [`read`]). With a real
//! virtual IP, `vip_up` / `vip_down` move the address itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_core::data::DataView;
use tandem_core::{NodeId, ShardName, Topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

use crate::event::{Event, EventSender};

/// How long a node that gave up a shard keeps its ingress socket.
pub const RELEASE_GRACE: Duration = Duration::from_millis(1000);
/// Largest datagram read.
const DATAGRAM_LEN_MAX: usize = 65_535;
/// Between two warnings about an address that cannot be bound.
const BIND_WARN_INTERVAL: Duration = Duration::from_secs(5);

/// Largest TCP frame (the stream's message limit).
const FRAME_LEN_MAX: usize = 64 * 1024;
/// Replies queued per TCP connection before new ones are dropped.
const CONNECTION_QUEUE_LEN_MAX: usize = 256;

/// Open TCP connections of a shard's ingress, by peer address: where replies go.
type Connections = Arc<parking_lot::Mutex<BTreeMap<SocketAddr, mpsc::Sender<Vec<u8>>>>>;

/// The TCP side of a bound ingress.
struct TcpBound {
    acceptor: tokio::task::JoinHandle<()>,
    connections: Connections,
}

/// One bound ingress address.
struct Bound {
    addr: SocketAddr,
    socket: Arc<UdpSocket>,
    reader: tokio::task::JoinHandle<()>,
    /// Tells the reader to stop taking new datagrams, hand over what is queued and end.
    release: Option<tokio::sync::oneshot::Sender<()>>,
    tcp: Option<TcpBound>,
    /// When this node stopped being the shard's primary.
    lost_at: Option<Instant>,
}

impl TcpBound {
    /// Stops listening and closes every connection.
    fn close(self) {
        self.acceptor.abort();
        // Dropping the senders ends every connection's writer, which closes it.
        self.connections.lock().clear();
    }
}

impl Bound {
    /// Gives the address up without losing what already reached this socket: the reader
    /// steers new datagrams to the other sockets bound to the address and hands over those
    /// queued (see [`read`]), then ends, and the socket closes with it.
    fn release(mut self) {
        if let Some(tcp) = self.tcp.take() {
            tcp.close();
        }
        let told = self
            .release
            .take()
            .is_some_and(|release| release.send(()).is_ok());
        if !told {
            self.reader.abort();
        }
    }

    fn close(self) {
        self.reader.abort();
        if let Some(tcp) = self.tcp {
            tcp.close();
        }
    }
}

/// What to run when an address is taken or given up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VipChange {
    /// Bound on this node.
    Up {
        /// The shard.
        shard: ShardName,
        /// Its UDP address.
        udp: SocketAddr,
    },
    /// Released by this node.
    Down {
        /// The shard.
        shard: ShardName,
        /// Its UDP address.
        udp: SocketAddr,
    },
}

/// The node's ingress sockets.
#[derive(Default)]
pub struct Ingress {
    bound: BTreeMap<ShardName, Bound>,
    warned: BTreeMap<ShardName, Instant>,
}

/// Binds `addr` for UDP with `SO_REUSEADDR` and `SO_REUSEPORT` (so the next primary's node
/// can bind it before this one lets go).
fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// The same for a TCP listener.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    TcpListener::from_std(socket.into())
}

impl Ingress {
    /// Binds the addresses of the shards whose primary this node hosts, releases the others
    /// after the grace period. Returns the vip changes to carry out.
    pub fn reconcile(
        &mut self,
        view: &DataView,
        topology: &Topology,
        me: NodeId,
        events: &EventSender,
    ) -> Vec<VipChange> {
        let now = Instant::now();
        let mut changes = Vec::new();
        for service in &topology.services {
            for (shard, spec) in &service.ingress {
                let Some(udp) = spec.udp.as_deref().and_then(|addr| addr.parse().ok()) else {
                    continue;
                };
                let tcp: Option<SocketAddr> =
                    spec.tcp.as_deref().and_then(|addr| addr.parse().ok());
                let ours = view.shards.get(shard).is_some_and(|shard| {
                    shard.primary.as_ref().is_some_and(|(_, node)| *node == me) && shard.acting
                });
                match self.bound.get_mut(shard) {
                    Some(bound) if ours => bound.lost_at = None,
                    Some(bound) => {
                        // TCP connections cannot follow the ACTIVE (the unit's replies leave
                        // from its new node): close them and stop listening at once, so
                        // clients reconnect to the new primary's node.
                        if let Some(tcp) = bound.tcp.take() {
                            tcp.close();
                        }
                        let lost_at = *bound.lost_at.get_or_insert(now);
                        if now.duration_since(lost_at) >= RELEASE_GRACE {
                            let bound = self.bound.remove(shard).expect("present");
                            let addr = bound.addr;
                            bound.release();
                            tracing::info!(%shard, %addr, "ingress released");
                            changes.push(VipChange::Down {
                                shard: shard.clone(),
                                udp: addr,
                            });
                        }
                    }
                    None if ours => match bind(udp).and_then(|socket| {
                        let listener = tcp.map(listen).transpose()?;
                        Ok((socket, listener))
                    }) {
                        Ok((socket, listener)) => {
                            let socket = Arc::new(socket);
                            let (release, released) = tokio::sync::oneshot::channel();
                            let reader = tokio::spawn(read(
                                shard.clone(),
                                socket.clone(),
                                events.clone(),
                                released,
                            ));
                            let tcp_bound = listener.map(|listener| {
                                let connections = Connections::default();
                                let acceptor = tokio::spawn(accept(
                                    shard.clone(),
                                    listener,
                                    connections.clone(),
                                    events.clone(),
                                ));
                                TcpBound {
                                    acceptor,
                                    connections,
                                }
                            });
                            tracing::info!(%shard, addr = %udp, tcp = ?tcp, "ingress bound");
                            self.warned.remove(shard);
                            self.bound.insert(
                                shard.clone(),
                                Bound {
                                    addr: udp,
                                    socket,
                                    reader,
                                    release: Some(release),
                                    tcp: tcp_bound,
                                    lost_at: None,
                                },
                            );
                            changes.push(VipChange::Up {
                                shard: shard.clone(),
                                udp,
                            });
                        }
                        Err(error) => {
                            let due = self
                                .warned
                                .get(shard)
                                .is_none_or(|at| now.duration_since(*at) >= BIND_WARN_INTERVAL);
                            if due {
                                tracing::warn!(%shard, addr = %udp, %error, "cannot bind the shard's ingress address; retrying");
                                self.warned.insert(shard.clone(), now);
                            }
                        }
                    },
                    None => {
                        // Not ours (any more): no bind to retry.
                        self.warned.remove(shard);
                    }
                }
            }
        }
        changes
    }

    /// Whether [`Ingress::reconcile`] has work that time alone makes due: an address held
    /// through its release grace, or a bind to retry. Otherwise it changes nothing until the
    /// view or the topology does, and the event loop skips it (it walks every shard with an
    /// ingress, which on a node of thousands of shards is not free on every pass).
    pub fn has_timed_work(&self) -> bool {
        !self.warned.is_empty() || self.bound.values().any(|bound| bound.lost_at.is_some())
    }

    /// Sends a unit's reply: on the peer's TCP connection (`tcp`), or from the shard's UDP
    /// socket. Returns false when this node does not hold the address or the connection (the
    /// reply is dropped).
    pub fn reply(&self, shard: &ShardName, peer: SocketAddr, payload: &[u8], tcp: bool) -> bool {
        let Some(bound) = self.bound.get(shard) else {
            return false;
        };
        if tcp {
            return bound.tcp.as_ref().is_some_and(|tcp| {
                tcp.connections
                    .lock()
                    .get(&peer)
                    .is_some_and(|connection| connection.try_send(payload.to_vec()).is_ok())
            });
        }
        match bound.socket.try_send_to(payload, peer) {
            Ok(_) => true,
            Err(error) => {
                tracing::debug!(%shard, %peer, %error, "ingress reply not sent");
                false
            }
        }
    }
}

impl Drop for Ingress {
    fn drop(&mut self) {
        for (_, bound) in std::mem::take(&mut self.bound) {
            bound.close();
        }
    }
}

/// Accepts TCP connections to a shard's ingress.
async fn accept(
    shard: ShardName,
    listener: TcpListener,
    connections: Connections,
    events: EventSender,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let (sender, replies) = mpsc::channel(CONNECTION_QUEUE_LEN_MAX);
                connections.lock().insert(peer, sender);
                tokio::spawn(connection(
                    shard.clone(),
                    stream,
                    peer,
                    replies,
                    connections.clone(),
                    events.clone(),
                ));
            }
            Err(error) => {
                tracing::debug!(%shard, %error, "ingress accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// One TCP connection: frames in go to the event loop, replies out are framed the same way.
/// A frame longer than the stream's limit closes the connection.
async fn connection(
    shard: ShardName,
    stream: TcpStream,
    peer: SocketAddr,
    mut replies: mpsc::Receiver<Vec<u8>>,
    connections: Connections,
    events: EventSender,
) {
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        while let Some(reply) = replies.recv().await {
            let mut frame = (reply.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&reply);
            if write.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    loop {
        let mut length = [0u8; 4];
        if read.read_exact(&mut length).await.is_err() {
            break;
        }
        let length = u32::from_be_bytes(length) as usize;
        if length > FRAME_LEN_MAX {
            tracing::warn!(%shard, %peer, length, "ingress frame over 64 KiB; connection closed");
            break;
        }
        let mut payload = vec![0u8; length];
        if read.read_exact(&mut payload).await.is_err() {
            break;
        }
        let event = Event::Ingress {
            shard: shard.clone(),
            payload,
            peer,
            tcp: true,
        };
        if events.send(event).await.is_err() {
            break;
        }
    }
    connections.lock().remove(&peer);
    writer.abort();
}

/// Hands every datagram of `socket` to the event loop, until `released`. Then it connects the
/// socket to its own address: a connected UDP socket takes only datagrams from the address it
/// is connected to, so the kernel delivers every new datagram to the other sockets bound to
/// the address (the new primary's, through `SO_REUSEPORT`), while those already queued here
/// stay readable; the reader hands those over too and ends. Aborting it instead would drop
/// them, and the one it holds while the loop's queue is full: datagrams the ingress received.
async fn read(
    shard: ShardName,
    socket: Arc<UdpSocket>,
    events: EventSender,
    mut released: tokio::sync::oneshot::Receiver<()>,
) {
    let mut buffer = vec![0u8; DATAGRAM_LEN_MAX];
    let hand_over = |len: usize, peer: SocketAddr, buffer: &[u8]| Event::Ingress {
        shard: shard.clone(),
        payload: buffer[..len].to_vec(),
        peer,
        tcp: false,
    };
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buffer) => match received {
                Ok((len, peer)) => {
                    if events.send(hand_over(len, peer, &buffer)).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    // ICMP errors of earlier replies surface here on Linux; keep reading.
                    tracing::debug!(%shard, %error, "ingress receive error");
                }
            },
            _ = &mut released => break,
        }
    }
    let own = match socket.local_addr() {
        Ok(addr) if addr.ip().is_unspecified() => {
            let loopback: std::net::IpAddr = if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            };
            SocketAddr::new(loopback, addr.port())
        }
        Ok(addr) => addr,
        Err(_) => return,
    };
    if let Err(error) = socket.connect(own).await {
        tracing::warn!(%shard, %error, "could not stop the released ingress socket's intake");
    }
    // Straight from the socket (non-blocking): tokio's `try_recv_from` answers WouldBlock
    // until its reactor has seen the socket readable, which it may not have yet.
    let raw = socket2::SockRef::from(socket.as_ref());
    let mut handed = 0u64;
    loop {
        // SAFETY: `recv_from` only writes initialised bytes into the buffer, which is already
        // initialised anyway.
        let into = unsafe {
            &mut *(buffer.as_mut_slice() as *mut [u8] as *mut [std::mem::MaybeUninit<u8>])
        };
        match raw.recv_from(into) {
            Ok((len, peer)) => {
                let Some(peer) = peer.as_socket() else {
                    continue;
                };
                if events.send(hand_over(len, peer, &buffer)).await.is_err() {
                    return;
                }
                handed += 1;
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => tracing::debug!(%shard, %error, "ingress receive error"),
        }
    }
    if handed > 0 {
        tracing::info!(%shard, handed, "released ingress socket handed over its queued datagrams");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(event: Event) -> Vec<u8> {
        match event {
            Event::Ingress { payload, .. } => payload,
            other => panic!("not an ingress event: {other:?}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_released_socket_hands_over_what_it_queued_and_takes_nothing_new() {
        let (events, _control, mut data) = EventSender::new();
        let old = Arc::new(bind("127.0.0.1:0".parse().unwrap()).unwrap());
        let addr = old.local_addr().unwrap();
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        // Queued in the old socket before its reader ever ran: what a loop that fell behind
        // leaves there when the grace period ends.
        for n in 0..20 {
            sender
                .send_to(format!("queued {n}").as_bytes(), addr)
                .unwrap();
        }
        // The new primary's socket joins the address.
        let new = bind(addr).unwrap();
        let (release, released) = tokio::sync::oneshot::channel();
        let reader = tokio::spawn(read(
            ShardName("s".into()),
            old.clone(),
            events.clone(),
            released,
        ));
        let bound = Bound {
            addr,
            socket: old,
            reader,
            release: Some(release),
            tcp: None,
            lost_at: None,
        };
        bound.release();
        let mut handed = Vec::new();
        while handed.len() < 20 {
            let event = tokio::time::timeout(Duration::from_secs(5), data.recv())
                .await
                .expect("the released socket hands over every queued datagram")
                .expect("the queue is open");
            handed.push(String::from_utf8(payload(event)).unwrap());
        }
        let expected: Vec<String> = (0..20).map(|n| format!("queued {n}")).collect();
        assert_eq!(handed, expected);
        // From now on the address delivers to the new socket only.
        for n in 0..20 {
            sender
                .send_to(format!("later {n}").as_bytes(), addr)
                .unwrap();
        }
        let mut buffer = [0u8; 64];
        for n in 0..20 {
            let (len, _) = tokio::time::timeout(Duration::from_secs(5), new.recv_from(&mut buffer))
                .await
                .expect("the new socket gets every later datagram")
                .unwrap();
            assert_eq!(&buffer[..len], format!("later {n}").as_bytes());
        }
        assert!(
            data.try_recv().is_err(),
            "the released socket took a later datagram"
        );
    }
}
