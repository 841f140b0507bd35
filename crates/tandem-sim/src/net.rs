//! The simulated network: per-message delay, loss, duplication, reordering and partitions.
//!
//! Delays are drawn per message, so messages overtake each other (reordering) without a
//! separate mechanism; a small share gets a long delay to make stale messages arrive late.
//! A partition is a set of cut *directed* links, so one-way partitions are as easy to make as
//! symmetric ones. A link is checked when a message is sent and again when it would arrive:
//! messages in flight when a partition starts are lost, as they would be on a real network.
//!
//! The simulation's side of it (the `impl Sim` at the end) encodes what nodes send as the
//! daemon's peer envelopes, puts them on the [`Network`], and tells nodes of closed
//! connections.

use std::collections::BTreeMap;

use tandem_core::data::DataMessage;
use tandem_node::PeerMessage;
use tandem_proto::Message as _;

use crate::node::{Inbound, Status};
use crate::rng::Rng;
use crate::sim::{Event, Sim};

/// What travels between simulated nodes: a peer envelope as the daemon writes it (prost, with
/// raft-rs messages inside in raft-rs's own codec). It is decoded on arrival, so every codec is
/// exercised exactly as between daemons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wire(pub Vec<u8>);

/// Knobs and state of the network.
#[derive(Debug)]
pub struct Network {
    /// The network's own random stream.
    rng: Rng,
    /// Probability (per million) that a message is lost.
    pub loss_per_million: u64,
    /// Probability (per million) that a message is delivered twice.
    pub duplicate_per_million: u64,
    /// Shortest delivery delay, microseconds.
    pub delay_min_us: u64,
    /// Longest ordinary delivery delay, microseconds.
    pub delay_max_us: u64,
    /// Probability (per million) that a message is held back much longer (up to 200 ms).
    pub late_per_million: u64,
    /// Cut directed links `(from, to)`, with how many active partitions cut each.
    cut: BTreeMap<(u64, u64), u32>,
}

impl Network {
    /// A healthy network drawing from `rng`.
    pub fn new(rng: Rng, delay_max_us: u64) -> Self {
        Self {
            rng,
            loss_per_million: 0,
            duplicate_per_million: 0,
            delay_min_us: 1_000,
            delay_max_us,
            late_per_million: 10_000,
            cut: BTreeMap::new(),
        }
    }

    /// Whether the directed link `from → to` is cut.
    pub fn is_cut(&self, from: u64, to: u64) -> bool {
        self.cut.contains_key(&(from, to))
    }

    /// Cuts the given directed links (counted: overlapping partitions heal independently).
    pub fn cut(&mut self, links: &[(u64, u64)]) {
        for link in links {
            *self.cut.entry(*link).or_default() += 1;
        }
    }

    /// Heals links cut by one partition.
    pub fn heal(&mut self, links: &[(u64, u64)]) {
        for link in links {
            if let Some(count) = self.cut.get_mut(link) {
                *count -= 1;
                if *count == 0 {
                    self.cut.remove(link);
                }
            }
        }
    }

    /// Ends every partition and all loss and duplication (the end of the fault phase).
    pub fn calm(&mut self) {
        self.cut.clear();
        self.loss_per_million = 0;
        self.duplicate_per_million = 0;
    }

    /// The delays after which copies of one message arrive: none when it is lost, two when
    /// it is duplicated.
    pub fn transmit(&mut self) -> Vec<u64> {
        if self.rng.chance(self.loss_per_million) {
            return Vec::new();
        }
        let copies = if self.rng.chance(self.duplicate_per_million) {
            2
        } else {
            1
        };
        (0..copies)
            .map(|_| {
                let mut delay = self.rng.between(self.delay_min_us, self.delay_max_us);
                if self.rng.chance(self.late_per_million) {
                    delay += self.rng.between(20_000, 200_000);
                }
                delay
            })
            .collect()
    }
}

impl Sim {
    /// Sends a peer message in a peer envelope, as the daemon encodes it.
    pub(crate) fn send(&mut self, from: u64, to: u64, message: &PeerMessage) {
        self.report.messages_sent += 1;
        let envelope = tandem_proto::peer::Envelope {
            cluster: "sim".into(),
            from,
            to,
            body: Some(tandem_node::wire::encode(message)),
        };
        self.transmit(from, to, Wire(envelope.encode_to_vec()));
    }

    /// Sends a data-plane message (replication) as the daemon encodes it.
    pub(crate) fn send_data(&mut self, from: u64, to: u64, message: &DataMessage) {
        self.report.messages_sent += 1;
        let envelope = tandem_proto::peer::Envelope {
            cluster: "sim".into(),
            from,
            to,
            body: Some(tandem_proto::peer::envelope::Body::Data(
                tandem_node::data_wire::encode_message(message),
            )),
        };
        self.transmit(from, to, Wire(envelope.encode_to_vec()));
    }

    /// Puts bytes on the simulated network (loss, duplication, delay, partitions).
    fn transmit(&mut self, from: u64, to: u64, wire: Wire) {
        if self.net.is_cut(from, to) {
            self.report.messages_dropped += 1;
            return;
        }
        let delays = self.net.transmit();
        match delays.len() {
            0 => self.report.messages_dropped += 1,
            1 => {}
            _ => self.report.messages_duplicated += 1,
        }
        if let Some((last, copies)) = delays.split_last() {
            for delay in copies {
                let wire = wire.clone();
                self.schedule(*delay, Event::Deliver { from, to, wire });
            }
            self.schedule(*last, Event::Deliver { from, to, wire });
        }
    }

    /// Tells each running node of `to` that `from`'s connection to it closed, within
    /// `delay_max_us`, if this seed models closed connections.
    pub(crate) fn links_lost(&mut self, from: u64, to: &[u64], delay_max_us: u64) {
        if !self.params.link_loss {
            return;
        }
        for to in to {
            let node = (to - 1) as usize;
            if self.nodes[node].status == Status::Crashed {
                continue;
            }
            let delay = self.link_rng.between(0, delay_max_us);
            let life = self.nodes[node].life;
            self.report.links_lost += 1;
            self.send_input(node, life, delay, Inbound::LinkLost(from));
        }
    }
}
