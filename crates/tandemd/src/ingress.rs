//! Ingress: the UDP address of a shard follows its ACTIVE. The node that hosts the shard's
//! primary binds the address; every datagram that arrives is appended to the shard's stream
//! (replicated before the ACTIVE sees it) and replies the unit sends through the SDK leave from
//! the same socket, so the sender sees one address whatever node serves it.
//!
//! A node that stops being the primary keeps the socket a short grace period
//! ([`RELEASE_GRACE`]) so that the new primary's node can bind the same address meanwhile
//! (`SO_REUSEPORT`): what still reaches the old node is handed to its data plane, which forwards
//! it to the new primary or holds it, instead of being refused by the kernel. With a real
//! virtual IP, `vip_up` / `vip_down` move the address itself.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem_core::data::DataView;
use tandem_core::{NodeId, ShardName, Topology};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::runtime::Event;

/// How long a node that gave up a shard keeps its ingress socket.
pub const RELEASE_GRACE: Duration = Duration::from_millis(1000);
/// Largest datagram read.
const DATAGRAM_LEN_MAX: usize = 65_535;
/// Between two warnings about an address that cannot be bound.
const BIND_WARN_INTERVAL: Duration = Duration::from_secs(5);

/// One bound ingress address.
struct Bound {
    addr: SocketAddr,
    socket: Arc<UdpSocket>,
    reader: tokio::task::JoinHandle<()>,
    /// When this node stopped being the shard's primary.
    lost_at: Option<Instant>,
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

impl Ingress {
    /// Binds the addresses of the shards whose primary this node hosts, releases the others
    /// after the grace period. Returns the vip changes to carry out.
    pub fn reconcile(
        &mut self,
        view: &DataView,
        topology: &Topology,
        me: NodeId,
        events: &mpsc::Sender<Event>,
    ) -> Vec<VipChange> {
        let now = Instant::now();
        let mut changes = Vec::new();
        for service in &topology.services {
            for (shard, spec) in &service.ingress {
                let Some(udp) = spec.udp.as_deref().and_then(|addr| addr.parse().ok()) else {
                    continue;
                };
                let ours = view.shards.get(shard).is_some_and(|shard| {
                    shard.primary.as_ref().is_some_and(|(_, node)| *node == me) && shard.acting
                });
                match self.bound.get_mut(shard) {
                    Some(bound) if ours => bound.lost_at = None,
                    Some(bound) => {
                        let lost_at = *bound.lost_at.get_or_insert(now);
                        if now.duration_since(lost_at) >= RELEASE_GRACE {
                            let bound = self.bound.remove(shard).expect("present");
                            bound.reader.abort();
                            tracing::info!(%shard, addr = %bound.addr, "ingress released");
                            changes.push(VipChange::Down {
                                shard: shard.clone(),
                                udp: bound.addr,
                            });
                        }
                    }
                    None if ours => match bind(udp) {
                        Ok(socket) => {
                            let socket = Arc::new(socket);
                            let reader =
                                tokio::spawn(read(shard.clone(), socket.clone(), events.clone()));
                            tracing::info!(%shard, addr = %udp, "ingress bound");
                            self.warned.remove(shard);
                            self.bound.insert(
                                shard.clone(),
                                Bound {
                                    addr: udp,
                                    socket,
                                    reader,
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
                    None => {}
                }
            }
        }
        changes
    }

    /// Sends a unit's reply from the shard's ingress socket. Returns false when this node does
    /// not hold the address (the reply is dropped).
    pub fn reply(&self, shard: &ShardName, peer: SocketAddr, payload: &[u8]) -> bool {
        match self.bound.get(shard) {
            Some(bound) => match bound.socket.try_send_to(payload, peer) {
                Ok(_) => true,
                Err(error) => {
                    tracing::debug!(%shard, %peer, %error, "ingress reply not sent");
                    false
                }
            },
            None => false,
        }
    }

    /// Whether a timer should run `reconcile` again (a release is pending).
    pub fn releasing(&self) -> bool {
        self.bound.values().any(|bound| bound.lost_at.is_some())
    }
}

impl Drop for Ingress {
    fn drop(&mut self) {
        for bound in self.bound.values() {
            bound.reader.abort();
        }
    }
}

/// Hands every datagram of `socket` to the event loop.
async fn read(shard: ShardName, socket: Arc<UdpSocket>, events: mpsc::Sender<Event>) {
    let mut buffer = vec![0u8; DATAGRAM_LEN_MAX];
    loop {
        match socket.recv_from(&mut buffer).await {
            Ok((len, peer)) => {
                let event = Event::Ingress {
                    shard: shard.clone(),
                    payload: buffer[..len].to_vec(),
                    peer,
                };
                if events.send(event).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                // ICMP errors of earlier replies surface here on Linux; keep reading.
                tracing::debug!(%shard, %error, "ingress receive error");
            }
        }
    }
}
