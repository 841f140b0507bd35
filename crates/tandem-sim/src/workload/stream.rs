//! The stream workload: messages offered to a random node's ingress for a random shard, and
//! their payloads: `m<id>`, which a unit marks applied by writing `applied/<id>`.

use tandem_core::data::{MessageOrigin, Origin, StreamMessage};

use crate::checks::Violation;
use crate::node::Status;
use crate::sim::Sim;

/// The section a unit writes when it applies message `id`.
pub fn applied_key(id: u64) -> Vec<u8> {
    format!("applied/{id:012}").into_bytes()
}

/// The id in a stream message's payload.
pub fn message_id(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload)
        .ok()?
        .strip_prefix('m')?
        .parse()
        .ok()
}

impl Sim {
    /// The stream workload: a message for a random shard reaches a random node's ingress.
    pub(crate) fn offer_message(&mut self) -> Result<(), Violation> {
        let shards = &self.data_shards;
        let shard = shards[self.workload.pick(shards.len())].clone();
        let node = self.workload.pick(self.nodes.len());
        if self.nodes[node].status != Status::Running {
            return Ok(());
        }
        let id = self.next_message;
        let local_now = self.nodes[node].local_now(self.now);
        let Some(n) = self.nodes[node].node.as_mut() else {
            return Ok(());
        };
        let message = StreamMessage {
            payload: format!("m{id}").into_bytes(),
            origin: MessageOrigin {
                origin: Origin::Udp,
                peer: format!("127.0.0.1:{}", 5000 + id % 1000),
            },
        };
        if n.accept_message(local_now, &shard, message).is_ok() {
            self.next_message += 1;
            self.report.messages_offered += 1;
        }
        self.drive(node)
    }
}
