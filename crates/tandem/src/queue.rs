//! Queued (write-behind) commits: [`crate::Transaction::commit_queued`] puts a commit in its
//! shard's queue and returns; one flusher task per shard sends what is queued as one `async`
//! commit at a time, as big as the limits allow, and waits for its answer before sending the
//! next. Many small commits so cost one request, one op and one answer per batch instead of
//! one per commit.
//!
//! What the queue promises, and why it sends one batch at a time:
//! - Commits are applied in the order they were queued, and what is applied is always a
//!   *prefix* of what was queued: the next batch leaves only after tandemd accepted the one
//!   before. (With two batches in flight, a refusal of the first, say a lease that lapsed for
//!   a moment, could let the second through and leave a hole.)
//! - The first refusal sticks: the commits queued after it are dropped, and every later
//!   [`crate::Transaction::commit_queued`] fails with it until [`crate::Checkpoint::flush`]
//!   reports it. The application learns that some commits since its last flush were lost;
//!   none of those that follow the lost one can have been applied.
//! - The queue is bounded ([`QUEUED_WRITES_MAX`], [`QUEUED_BYTES_MAX`], counting the batch in
//!   flight): a commit that does not fit waits for room. With tandemd's own bound on how far
//!   the STANDBYs may lag (`async_lag_max_ops`), that bounds what a failover can lose.
//!
//! This module is the queue's state, without I/O; `data.rs` runs the flusher.

use std::collections::VecDeque;

use tandem_core::data::{writes_bytes, Write, COMMIT_BYTES_MAX, COMMIT_WRITES_MAX};

use crate::data::DataError;

/// Most writes a shard's queue holds (queued and in flight together).
pub const QUEUED_WRITES_MAX: usize = 4 * COMMIT_WRITES_MAX;
/// Most bytes of keys and values a shard's queue holds (queued and in flight together).
pub const QUEUED_BYTES_MAX: usize = 16 * 1024 * 1024;
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
    /// Writes and bytes of the batch tandemd has not answered yet.
    in_flight: Option<(usize, usize)>,
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
        let empty = self.writes == 0 && self.in_flight.is_none();
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

    /// The next batch to send, if nothing is in flight and something is queued. The flusher
    /// calls it after each answer and stops when it finds nothing.
    pub fn take(&mut self) -> Option<Batch> {
        if self.in_flight.is_some() {
            return None;
        }
        let Some(batch) = self.batches.pop_front() else {
            self.running = false;
            return None;
        };
        self.in_flight = Some((batch.writes.len(), batch.bytes));
        Some(batch)
    }

    /// tandemd answered the batch in flight. A refusal drops what is queued behind it.
    pub fn answered(&mut self, outcome: Result<u64, DataError>) {
        let Some((writes, bytes)) = self.in_flight.take() else {
            return;
        };
        self.writes -= writes;
        self.bytes -= bytes;
        match outcome {
            Ok(version) => self.version = self.version.max(version),
            Err(error) => {
                self.error.get_or_insert(error);
                self.batches.clear();
                self.writes = 0;
                self.bytes = 0;
            }
        }
    }

    /// Nothing is queued or in flight.
    pub fn is_drained(&self) -> bool {
        self.in_flight.is_none() && self.batches.is_empty()
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
            code: "no_lease",
            message: "lapsed".into(),
        }
    }

    #[test]
    fn commits_queued_meanwhile_leave_as_one_batch_in_order() {
        let mut queue = QueueState::default();
        assert_eq!(
            queue.push(3, vec![put("a", 1)], Some(7)),
            Ok(Pushed::Queued { wake: true })
        );
        let first = queue.take().unwrap();
        assert_eq!(first.writes, vec![put("a", 1)]);
        // While the first is in flight, the others gather into one batch and nothing leaves.
        for key in ["b", "a", "c"] {
            assert_eq!(
                queue.push(3, vec![put(key, 2)], Some(9)),
                Ok(Pushed::Queued { wake: false })
            );
        }
        assert_eq!(queue.take(), None);
        queue.answered(Ok(10));
        let second = queue.take().unwrap();
        assert_eq!(second.writes, vec![put("b", 2), put("a", 2), put("c", 2)]);
        assert_eq!(
            (second.epoch, second.consumed, second.bytes),
            (3, Some(9), 9)
        );
        queue.answered(Ok(11));
        assert!(queue.is_drained());
        assert_eq!(queue.take_outcome(), Ok(11));
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
        let epochs: Vec<(u64, usize)> = std::iter::from_fn(|| {
            let batch = queue.take()?;
            queue.answered(Ok(1));
            Some((batch.epoch, batch.writes.len()))
        })
        .collect();
        assert_eq!(epochs, vec![(1, 1), (2, COMMIT_WRITES_MAX), (2, 1)]);
        // Bytes cut batches too.
        let big = VALUE_HALF_BATCH;
        for key in ["x", "y", "z"] {
            queue.push(2, vec![put(key, big)], None).unwrap();
        }
        let sizes: Vec<usize> = std::iter::from_fn(|| {
            let batch = queue.take()?;
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
        // Room comes back as answers arrive.
        queue.take().unwrap();
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
        queue.answered(Err(refused()));
        // "b" never leaves: it came after a commit that was lost.
        assert_eq!(queue.take(), None);
        assert!(queue.is_drained());
        assert_eq!(queue.push(1, vec![put("c", 1)], None), Err(refused()));
        assert_eq!(queue.take_outcome(), Err(refused()));
        // Reported once; the queue works again.
        assert_eq!(
            queue.push(2, vec![put("c", 1)], None),
            Ok(Pushed::Queued { wake: true })
        );
        assert_eq!(queue.take_outcome(), Ok(0));
    }
}
