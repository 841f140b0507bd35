//! The daemon's event log: what the model did (every node logs the committed events it
//! applies) and, on the leader, what agents reported about units. Bounded: the oldest records
//! go first. `tandemctl events` reads it, and with `--follow` stays subscribed.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tandem_proto::admin::EventRecord;
use tokio::sync::broadcast;

/// Records kept for late readers.
pub const EVENT_LOG_LEN_MAX: usize = 10_000;
/// Records a slow follower may lag behind before it is told it missed some.
const SUBSCRIBER_LAG_MAX: usize = 4096;

/// A bounded, subscribable event log.
pub struct EventLog {
    /// This node's name, stamped on every record.
    node: String,
    inner: Mutex<Inner>,
}

struct Inner {
    records: VecDeque<EventRecord>,
    next_seq: u64,
    live: broadcast::Sender<EventRecord>,
}

/// Wall clock, ms since the Unix epoch.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl EventLog {
    /// An empty log for node `node`.
    pub fn new(node: &str) -> Self {
        let (live, _) = broadcast::channel(SUBSCRIBER_LAG_MAX);
        Self {
            node: node.to_owned(),
            inner: Mutex::new(Inner {
                records: VecDeque::new(),
                next_seq: 1,
                live,
            }),
        }
    }

    /// Appends an event.
    pub fn push(&self, kind: &str, message: String, index: u64) {
        let mut inner = self.inner.lock();
        let record = EventRecord {
            seq: inner.next_seq,
            time_unix_ms: wall_ms(),
            node: self.node.clone(),
            kind: kind.to_owned(),
            message,
            index,
        };
        inner.next_seq += 1;
        if inner.records.len() == EVENT_LOG_LEN_MAX {
            inner.records.pop_front();
        }
        inner.records.push_back(record.clone());
        // No subscriber is not an error.
        let _ = inner.live.send(record);
    }

    /// The records from `since_seq` on that are still kept, the next sequence number, and a
    /// subscription to what comes after them (no record is missed or repeated in between).
    pub fn subscribe(
        &self,
        since_seq: u64,
    ) -> (Vec<EventRecord>, u64, broadcast::Receiver<EventRecord>) {
        let inner = self.inner.lock();
        let backlog = inner
            .records
            .iter()
            .filter(|record| record.seq >= since_seq)
            .cloned()
            .collect();
        (backlog, inner.next_seq, inner.live.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_then_live_without_gaps() {
        let log = EventLog::new("n1");
        log.push("role", "first".into(), 3);
        log.push("role", "second".into(), 4);
        let (backlog, next, mut live) = log.subscribe(2);
        assert_eq!(backlog.len(), 1);
        assert_eq!(backlog[0].message, "second");
        assert_eq!(backlog[0].node, "n1");
        assert_eq!(next, 3);
        log.push("fault", "third".into(), 0);
        let record = live.try_recv().unwrap();
        assert_eq!((record.seq, record.message.as_str()), (3, "third"));
    }

    #[test]
    fn the_log_is_bounded() {
        let log = EventLog::new("n1");
        for i in 0..EVENT_LOG_LEN_MAX + 5 {
            log.push("x", i.to_string(), 0);
        }
        let (backlog, next, _) = log.subscribe(0);
        assert_eq!(backlog.len(), EVENT_LOG_LEN_MAX);
        assert_eq!(backlog[0].seq, 6);
        assert_eq!(next, EVENT_LOG_LEN_MAX as u64 + 6);
    }
}
