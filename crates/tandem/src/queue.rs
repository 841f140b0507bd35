//! Queued (write-behind) commits: [`crate::Transaction::commit_queued`] puts a commit in its
//! shard's queue and returns; one flusher task per shard sends what is queued as `async`
//! commits, each as big as the limits allow, with up to [`IN_FLIGHT_MAX`] of them awaiting
//! their answers at once. Many small commits so cost one request, one op and one answer per
//! batch instead of one per commit; the second batch in flight keeps tandemd busy while the
//! first one's answer travels back (with one, a batch of 4096 writes waited out a round trip
//! of about 6 ms on a loaded host, which bounded the rate).
//!
//! What the queue promises:
//! - Commits are applied in the order they were queued, and what is applied is always a
//!   *prefix* of what was queued. Batches in flight together form a *chain*: each carries
//!   its chain and its index in it, and tandemd applies a batch only right after the one
//!   before it (`DataRequest::Commit::chain`). So when one is refused (say a lease that
//!   lapsed for a moment), the one after it is refused too, and no hole is left. A new chain
//!   starts only when nothing is in flight, and batches of different epochs are never in
//!   flight together.
//! - The first refusal sticks: the commits queued after it are dropped, and every later
//!   [`crate::Transaction::commit_queued`] fails with it until [`crate::Checkpoint::flush`]
//!   reports it. The application learns that some commits since its last flush were lost;
//!   none of those that follow the lost one can have been applied.
//! - The queue is bounded ([`QUEUED_WRITES_MAX`], [`QUEUED_BYTES_MAX`], counting the batches
//!   in flight): a commit that does not fit waits for room. With tandemd's own bound on how
//!   far the STANDBYs may lag (`async_lag_max_ops`), that bounds what a failover can lose.
//!
//! This module is the queue's state, without I/O; `data.rs` runs the flusher.

use std::collections::VecDeque;

use tandem_core::data::{writes_bytes, Write, COMMIT_BYTES_MAX, COMMIT_WRITES_MAX};

use crate::data::DataError;

/// Most writes a shard's queue holds (queued and in flight together).
pub const QUEUED_WRITES_MAX: usize = 4 * COMMIT_WRITES_MAX;
/// Most bytes of keys and values a shard's queue holds (queued and in flight together).
pub const QUEUED_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Batches sent and not answered yet, at most.
pub const IN_FLIGHT_MAX: usize = 2;
/// A batch is cut at this many bytes of keys and values (smaller than a commit may be, so
/// that one batch never holds tandemd's loop long).
const BATCH_BYTES_MAX: usize = 1024 * 1024;
const _: () = assert!(BATCH_BYTES_MAX <= COMMIT_BYTES_MAX);

/// Commits merged into one, to be sent as one `async` commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Batch {
    /// The epoch every commit of it was made at.
    pub epoch: u64,
    /// Their writes, in order (a later write of a key wins, as it would one commit later).
    pub writes: Vec<Write>,
    /// The highest stream position they consume.
    pub consumed: Option<u64>,
    /// Bytes of keys and values.
    pub bytes: usize,
}

/// What [`QueueState::push`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Queued; `wake` when a flusher must be started (none runs).
    Queued { wake: bool },
    /// No room: wait for an answer and try again with the writes given back.
    Full(Vec<Write>),
}

/// One shard's queue.
#[derive(Debug, Default)]
pub(crate) struct QueueState {
    /// Not sent yet, oldest first.
    batches: VecDeque<Batch>,
    /// Epoch, writes and bytes of each batch tandemd has not answered yet, oldest first.
    in_flight: VecDeque<(u64, usize, usize)>,
    /// The chain of the batches in flight, and the index the next one takes in it.
    chain: u64,
    next_index: u64,
    /// Writes and bytes queued or in flight.
    writes: usize,
    bytes: usize,
    /// The first refusal since the last flush.
    error: Option<DataError>,
    /// The replica version tandemd answered for the last batch.
    version: u64,
    /// A flusher runs (from the push that found none until its `take` found nothing).
    running: bool,
}

impl QueueState {
    /// Queues a commit made at `epoch` (its writes are checked already).
    pub fn push(
        &mut self,
        epoch: u64,
        writes: Vec<Write>,
        consumed: Option<u64>,
    ) -> Result<Pushed, DataError> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        let bytes = writes_bytes(&writes);
        let empty = self.writes == 0 && self.in_flight.is_empty();
        // An empty queue takes any commit that is valid on its own.
        if !empty
            && (self.writes + writes.len() > QUEUED_WRITES_MAX
                || self.bytes + bytes > QUEUED_BYTES_MAX)
        {
            return Ok(Pushed::Full(writes));
        }
        self.writes += writes.len();
        self.bytes += bytes;
        match self.batches.back_mut() {
            Some(last)
                if last.epoch == epoch
                    && last.writes.len() + writes.len() <= COMMIT_WRITES_MAX
                    && last.bytes + bytes <= BATCH_BYTES_MAX =>
            {
                last.writes.extend(writes);
                last.bytes += bytes;
                last.consumed = last.consumed.max(consumed);
            }
            _ => self.batches.push_back(Batch {
                epoch,
                writes,
                consumed,
                bytes,
            }),
        }
        let wake = !self.running;
        self.running = true;
        Ok(Pushed::Queued { wake })
    }

    /// The next batch to send and its `(chain, index)`, if fewer than [`IN_FLIGHT_MAX`] are in
    /// flight and one is queued (of the same epoch as those in flight). The flusher calls it
    /// until it finds nothing, then waits for the oldest answer; it stops when nothing is
    /// queued or in flight.
    pub fn take(&mut self) -> Option<(Batch, (u64, u64))> {
        if self.in_flight.len() >= IN_FLIGHT_MAX {
            return None;
        }
        let Some(next) = self.batches.front() else {
            if self.in_flight.is_empty() {
                self.running = false;
            }
            return None;
        };
        match self.in_flight.front() {
            Some((epoch, ..)) if *epoch != next.epoch => return None,
            Some(_) => {}
            None => {
                // Nothing in flight: whatever came before was applied (a refusal would have
                // emptied the queue), so a new chain may start.
                self.chain += 1;
                self.next_index = 0;
            }
        }
        let batch = self.batches.pop_front()?;
        self.in_flight
            .push_back((batch.epoch, batch.writes.len(), batch.bytes));
        let index = self.next_index;
        self.next_index += 1;
        Some((batch, (self.chain, index)))
    }

    /// tandemd answered the oldest batch in flight. A refusal drops what is queued behind it
    /// (what is in flight behind it is refused by tandemd: its chain is broken).
    pub fn answered(&mut self, outcome: Result<u64, DataError>) {
        let Some((_, writes, bytes)) = self.in_flight.pop_front() else {
            return;
        };
        self.writes -= writes;
        self.bytes -= bytes;
        match outcome {
            Ok(version) => self.version = self.version.max(version),
            Err(error) => {
                self.error.get_or_insert(error);
                let (writes, bytes) = self
                    .in_flight
                    .iter()
                    .fold((0, 0), |(w, b), (_, writes, bytes)| (w + writes, b + bytes));
                self.batches.clear();
                self.writes = writes;
                self.bytes = bytes;
            }
        }
    }

    /// Nothing is queued or in flight.
    pub fn is_drained(&self) -> bool {
        self.in_flight.is_empty() && self.batches.is_empty()
    }

    /// Once drained: the first refusal since the last call (cleared), or the version of the
    /// last batch applied.
    pub fn take_outcome(&mut self) -> Result<u64, DataError> {
        match self.error.take() {
            Some(error) => Err(error),
            None => Ok(self.version),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str, len: usize) -> Write {
        Write {
            key: key.as_bytes().to_vec(),
            value: Some(bytes::Bytes::from(vec![b'v'; len])),
            priority: None,
        }
    }

    fn refused() -> DataError {
        DataError::Refused {
            code: tandem_core::data::RefusalCode::NoLease,
            message: "lapsed".into(),
        }
    }

    fn broken() -> DataError {
        DataError::Refused {
            code: tandem_core::data::RefusalCode::QueueBroken,
            message: "an earlier batch was refused".into(),
        }
    }

    #[test]
    fn commits_leave_in_order_two_batches_at_most_in_one_chain() {
        let mut queue = QueueState::default();
        assert_eq!(
            queue.push(3, vec![put("a", 1)], Some(7)),
            Ok(Pushed::Queued { wake: true })
        );
        let (first, chain) = queue.take().unwrap();
        assert_eq!((first.writes, chain), (vec![put("a", 1)], (1, 0)));
        queue.push(3, vec![put("b", 2)], None).unwrap();
        let (second, chain) = queue.take().unwrap();
        assert_eq!((second.writes, chain), (vec![put("b", 2)], (1, 1)));
        // Two in flight: the others gather into one batch and nothing leaves.
        for key in ["a", "c"] {
            assert_eq!(
                queue.push(3, vec![put(key, 2)], Some(9)),
                Ok(Pushed::Queued { wake: false })
            );
        }
        assert_eq!(queue.take(), None);
        queue.answered(Ok(10));
        // The chain goes on while a batch of it is in flight.
        let (third, chain) = queue.take().unwrap();
        assert_eq!(third.writes, vec![put("a", 2), put("c", 2)]);
        assert_eq!(
            (third.epoch, third.consumed, third.bytes, chain),
            (3, Some(9), 6, (1, 2))
        );
        queue.answered(Ok(11));
        queue.answered(Ok(12));
        assert!(queue.is_drained());
        assert_eq!(queue.take(), None);
        assert_eq!(queue.take_outcome(), Ok(12));
        // Once nothing is in flight, the next batch starts a new chain.
        assert_eq!(
            queue.push(3, vec![put("d", 1)], None),
            Ok(Pushed::Queued { wake: true })
        );
        assert_eq!(queue.take().unwrap().1, (2, 0));
    }

    #[test]
    fn a_batch_holds_one_epoch_and_stays_within_a_commits_limits() {
        let mut queue = QueueState::default();
        queue.push(1, vec![put("a", 1)], None).unwrap();
        queue.push(2, vec![put("b", 1)], None).unwrap();
        for index in 0..COMMIT_WRITES_MAX {
            queue
                .push(2, vec![put(&format!("k{index}"), 1)], None)
                .unwrap();
        }
        // Batches of two epochs are never in flight together: the epoch-2 one waits.
        let (first, chain) = queue.take().unwrap();
        assert_eq!((first.epoch, first.writes.len(), chain), (1, 1, (1, 0)));
        assert_eq!(queue.take(), None);
        queue.answered(Ok(1));
        let epochs: Vec<(u64, usize, (u64, u64))> = std::iter::from_fn(|| queue.take())
            .map(|(batch, chain)| (batch.epoch, batch.writes.len(), chain))
            .collect();
        assert_eq!(epochs, vec![(2, COMMIT_WRITES_MAX, (2, 0)), (2, 1, (2, 1))]);
        queue.answered(Ok(1));
        queue.answered(Ok(1));
        assert!(queue.is_drained());
        // Bytes cut batches too.
        let big = VALUE_HALF_BATCH;
        for key in ["x", "y", "z"] {
            queue.push(2, vec![put(key, big)], None).unwrap();
        }
        let sizes: Vec<usize> = std::iter::from_fn(|| {
            let (batch, _) = queue.take()?;
            queue.answered(Ok(1));
            Some(batch.writes.len())
        })
        .collect();
        assert_eq!(sizes, vec![2, 1]);
    }

    const VALUE_HALF_BATCH: usize = BATCH_BYTES_MAX / 2 - 1;

    #[test]
    fn a_full_queue_waits_and_an_empty_one_takes_any_valid_commit() {
        let mut queue = QueueState::default();
        let huge: Vec<Write> = (0..QUEUED_WRITES_MAX)
            .map(|index| put(&format!("k{index}"), 1))
            .collect();
        assert_eq!(queue.push(1, huge, None), Ok(Pushed::Queued { wake: true }));
        assert_eq!(
            queue.push(1, vec![put("one", 1)], None),
            Ok(Pushed::Full(vec![put("one", 1)]))
        );
        // Room comes back as answers arrive (a batch in flight counts until answered).
        queue.take().unwrap();
        assert_eq!(
            queue.push(1, vec![put("one", 1)], None),
            Ok(Pushed::Full(vec![put("one", 1)]))
        );
        queue.answered(Ok(1));
        assert_eq!(
            queue.push(1, vec![put("one", 1)], None),
            Ok(Pushed::Queued { wake: false })
        );
    }

    #[test]
    fn a_refusal_drops_what_follows_and_sticks_until_reported() {
        let mut queue = QueueState::default();
        queue.push(1, vec![put("a", 1)], None).unwrap();
        queue.take().unwrap();
        queue.push(1, vec![put("b", 1)], None).unwrap();
        assert_eq!(queue.take().unwrap().1, (1, 1));
        queue.push(1, vec![put("c", 1)], None).unwrap();
        queue.answered(Err(refused()));
        // "c" never leaves: it came after a commit that was lost. "b", in flight, is refused
        // by tandemd (its chain broke); the first refusal is the one reported.
        assert_eq!(queue.take(), None);
        assert!(!queue.is_drained());
        assert_eq!(queue.push(1, vec![put("d", 1)], None), Err(refused()));
        queue.answered(Err(broken()));
        assert!(queue.is_drained());
        assert_eq!(queue.take(), None);
        assert_eq!(queue.take_outcome(), Err(refused()));
        // Reported once; the queue works again, in a new chain.
        assert_eq!(
            queue.push(2, vec![put("e", 1)], None),
            Ok(Pushed::Queued { wake: true })
        );
        assert_eq!(queue.take().unwrap().1, (2, 0));
        queue.answered(Ok(5));
        assert_eq!(queue.take_outcome(), Ok(5));
    }
}
