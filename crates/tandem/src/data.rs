//! Checkpoints and signaling streams: the unit's side of tandem's data plane.
//!
//! **Checkpoints.** Each shard has a replicated key-value store, its *checkpoint*. The ACTIVE
//! writes it ([`Checkpoint::put`], [`Checkpoint::delete`], or several writes at once with a
//! [`Transaction`]); tandem copies every write to the shard's STANDBYs before a `sync` commit
//! returns, so a STANDBY that takes over has every write the ACTIVE was told is done. Any unit
//! holding the shard (ACTIVE or STANDBY) reads its local replica with [`Checkpoint::get`] and
//! [`Checkpoint::iterate`]; a hot STANDBY follows changes with [`Checkpoint::subscribe`].
//!
//! Three ways to commit, from safest to fastest: [`Transaction::commit_sync`] (returns once
//! every in-sync STANDBY applied it), [`Transaction::commit_async`] (once the local replica
//! has it; STANDBYs follow within a bound) and [`Transaction::commit_queued`] (write-behind:
//! returns at once; [`Checkpoint::flush`] tells when everything queued is safe, or that some
//! of it was refused).
//!
//! **Streams.** Inbound signaling for a shard (from its ingress address, or from
//! [`crate::client`]) is appended to the shard's stream and replicated before the ACTIVE sees
//! it. The ACTIVE gets each message once, in order, through [`crate::Unit::message`], and
//! acknowledges it by committing its effect together with the message's position
//! ([`Transaction::consume`]). After a failover or switchover the new ACTIVE gets every message
//! after the last position committed: none lost, none applied twice (as long as the unit
//! applies a message and consumes it in the same commit).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use tandem_core::data::{DataReply, DataRequest, RefusalCode, Write};
use tandem_proto::sdk::{unit_to_agent, UnitToAgent};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::queue::{Pushed, QueueState};
use crate::{Context, Role, ShardName};

pub use crate::queue::{QUEUED_BYTES_MAX, QUEUED_WRITES_MAX};
pub use tandem_core::data::Origin;

/// Largest key (bytes).
pub const KEY_LEN_MAX: usize = tandem_core::data::KEY_LEN_MAX;
/// Largest value (bytes).
pub const VALUE_LEN_MAX: usize = tandem_core::data::VALUE_LEN_MAX;
/// Most writes in one commit.
pub const COMMIT_WRITES_MAX: usize = tandem_core::data::COMMIT_WRITES_MAX;
/// Bytes a scan page asks for.
const SCAN_PAGE_BYTES: u64 = 1024 * 1024;

/// Why a checkpoint or stream call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// Only a unit acting ACTIVE for the shard may write its checkpoint.
    #[error("unit is not ACTIVE for shard {shard} ({why}); only the ACTIVE writes the checkpoint")]
    NotActive {
        /// The shard.
        shard: ShardName,
        /// Why not, as the unit sees it: its role, or its lease (which its node renews).
        why: String,
    },
    /// A write is malformed or too big (see [`KEY_LEN_MAX`], [`VALUE_LEN_MAX`],
    /// [`COMMIT_WRITES_MAX`]); nothing was written.
    #[error("bad write: {0}")]
    BadWrite(String),
    /// tandemd refused the call; `code` says why ([`RefusalCode`]).
    ///
    /// [`RefusalCode::OutcomeUnknown`]: the commit may or may not have been applied (the
    /// shard's ACTIVE changed while it was in flight); the new ACTIVE's replica tells.
    /// [`RefusalCode::QueueBroken`]: a queued commit was refused because one queued before
    /// it was; [`Checkpoint::flush`] reports the first refusal.
    #[error("tandemd refused the call ({code}): {message}")]
    Refused {
        /// Why.
        code: RefusalCode,
        /// For humans.
        message: String,
    },
    /// The connection to tandemd is gone (the unit is being stopped).
    #[error("lost the connection to tandemd")]
    Disconnected,
    /// tandemd answered something this SDK did not expect (a version mismatch).
    #[error("unexpected answer from tandemd: {0}")]
    Unexpected(String),
}

/// A signaling message of a shard's stream, as the ACTIVE receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its position in the stream; commit it with [`Transaction::consume`].
    pub seq: u64,
    /// The shard's epoch it was delivered in.
    pub epoch: u64,
    /// The bytes as received.
    pub payload: Vec<u8>,
    /// Where it came from.
    pub origin: Origin,
    /// The sender (`ip:port`) for ingress messages; empty for client messages. Replies go back
    /// to it from the shard's ingress address.
    pub peer: String,
}

/// A change to a replica, as a subscriber sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The replica's version after the change.
    pub version: u64,
    /// The writes (empty for a stream message or a reset).
    pub writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// The replica was emptied to be copied again from the ACTIVE: read it again once the
    /// copy is done (its position answers `in_sync`).
    pub reset: bool,
}

/// Where a replica stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// Version (count of ops applied).
    pub version: u64,
    /// Last stream position consumed.
    pub consumed: u64,
    /// Order-independent digest of the replica's content.
    pub digest: u128,
    /// Sections (keys) held.
    pub sections: u64,
    /// For the ACTIVE: STANDBYs in sync; for a STANDBY: 1 when its replica is verified in sync.
    pub in_sync: u64,
}

/// Calls waiting for their answers.
#[derive(Debug, Default)]
pub(crate) struct Calls {
    next: u64,
    waiting: HashMap<u64, Waiting>,
}

/// What an answer completes.
#[derive(Debug)]
pub(crate) enum Waiting {
    /// A caller awaits it.
    Reply(oneshot::Sender<DataReply>),
    /// The start of a delivery round for a shard (handled in order with the deliveries).
    Round(ShardName),
}

impl Calls {
    pub(crate) fn register(&mut self, waiting: Waiting) -> u64 {
        self.next += 1;
        self.waiting.insert(self.next, waiting);
        self.next
    }

    pub(crate) fn take(&mut self, id: u64) -> Option<Waiting> {
        self.waiting.remove(&id)
    }
}

/// Subscribers of replica changes, per shard.
pub(crate) type Subscribers = Arc<Mutex<HashMap<ShardName, mpsc::UnboundedSender<Change>>>>;

/// A shard's queue of [`Transaction::commit_queued`] commits, and the signal that it changed
/// (an answer came: room, drained, or a refusal).
#[derive(Debug, Default)]
pub(crate) struct Queue {
    state: Mutex<QueueState>,
    changed: Notify,
}

/// The queues, per shard (made on first use).
pub(crate) type Queues = Arc<Mutex<HashMap<ShardName, Arc<Queue>>>>;

impl Queue {
    /// Waits until nothing is queued or in flight.
    async fn drained(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.state.lock().is_drained() {
                return;
            }
            changed.await;
        }
    }
}

/// Sends `queue`'s batches, up to [`crate::queue::IN_FLIGHT_MAX`] at once, and hands it their
/// answers in order, until nothing is queued or in flight.
async fn run_flusher(ctx: Context, shard: ShardName, queue: Arc<Queue>) {
    let mut in_flight = std::collections::VecDeque::new();
    loop {
        loop {
            let Some((batch, chain)) = queue.state.lock().take() else {
                break;
            };
            let sent = ctx
                .send_call(DataRequest::Commit {
                    shard: shard.clone(),
                    epoch: batch.epoch,
                    writes: batch.writes,
                    consumed: batch.consumed,
                    sync: false,
                    chain: Some(chain),
                })
                .await;
            in_flight.push_back(sent);
        }
        let Some(sent) = in_flight.pop_front() else {
            return;
        };
        let outcome = match sent {
            Ok(answer) => Context::answer_of(answer).await,
            Err(error) => Err(error),
        }
        .and_then(|reply| match reply {
            DataReply::Committed { version } => Ok(version),
            other => Err(DataError::Unexpected(format!("{other:?}"))),
        });
        match &outcome {
            // The batch sent with a refused one: its refusal says nothing new.
            Err(DataError::Refused {
                code: RefusalCode::QueueBroken,
                ..
            }) => {}
            Err(error) => {
                tracing::warn!(%shard, %error, "queued commits refused; the next flush reports it");
            }
            Ok(_) => {}
        }
        queue.state.lock().answered(outcome);
        queue.changed.notify_waiters();
    }
}

impl Context {
    /// The checkpoint of `shard` (cheap; make one per use or keep it: keeping it saves a
    /// lookup and a copy of the shard name per commit, which counts when queueing many).
    pub fn checkpoint(&self, shard: &ShardName) -> Checkpoint {
        Checkpoint(Arc::new(CheckpointInner {
            ctx: self.clone(),
            shard: shard.clone(),
            queue: std::sync::OnceLock::new(),
        }))
    }

    /// The queue of `shard`'s queued commits.
    fn queue(&self, shard: &ShardName) -> Arc<Queue> {
        self.queues.lock().entry(shard.clone()).or_default().clone()
    }

    /// Waits until every commit queued for `shard` was answered (for a planned quiesce: what
    /// was queued before it reaches the replica before the STANDBY takes over).
    pub(crate) async fn queued_commits_answered(&self, shard: &ShardName) {
        let queue = self.queues.lock().get(shard).cloned();
        if let Some(queue) = queue {
            queue.drained().await;
        }
    }

    /// Sends `request` to tandemd and waits for its answer.
    pub(crate) async fn call(&self, request: DataRequest) -> Result<DataReply, DataError> {
        Self::answer_of(self.send_call(request).await?).await
    }

    /// Sends `request` to tandemd; the answer comes on the receiver (see
    /// [`answer_of`](Self::answer_of)).
    async fn send_call(
        &self,
        request: DataRequest,
    ) -> Result<oneshot::Receiver<DataReply>, DataError> {
        let (tx, rx) = oneshot::channel();
        let id = self.calls.lock().register(Waiting::Reply(tx));
        let message = UnitToAgent {
            kind: Some(unit_to_agent::Kind::Data(
                tandem_proto::sdk_wire::encode_call(id, request),
            )),
        };
        if self.outbox.send(message).await.is_err() {
            self.calls.lock().take(id);
            return Err(DataError::Disconnected);
        }
        Ok(rx)
    }

    /// The answer to a call [`send_call`](Self::send_call) sent.
    async fn answer_of(answer: oneshot::Receiver<DataReply>) -> Result<DataReply, DataError> {
        answer.await.map_or(Err(DataError::Disconnected), outcome)
    }
}

impl Context {
    /// Replies to the sender of an ingress `message` of `shard`: from the shard's UDP ingress
    /// address (the sender sees the address it wrote to answer; datagrams may be lost like any
    /// UDP), or on its TCP connection, framed like its messages (dropped when the connection
    /// is gone, e.g. after a switch). A message from a client has no one to reply to.
    pub async fn reply(
        &self,
        shard: &ShardName,
        message: &Message,
        payload: impl Into<Vec<u8>>,
    ) -> Result<(), DataError> {
        if message.origin == Origin::Client || message.peer.is_empty() {
            return Err(DataError::BadWrite(format!(
                "message {} of shard {shard} came from a client, not an ingress address: there \
                 is no sender to reply to",
                message.seq
            )));
        }
        self.send_reply(
            shard,
            &message.peer,
            payload.into(),
            message.origin == Origin::Tcp,
        )
        .await
    }

    /// Sends a UDP datagram to `peer` (`ip:port`) from `shard`'s ingress address: to answer an
    /// earlier sender, or to send a request of the unit's own (SIP's BYE to a caller).
    pub async fn reply_to(
        &self,
        shard: &ShardName,
        peer: &str,
        payload: impl Into<Vec<u8>>,
    ) -> Result<(), DataError> {
        self.send_reply(shard, peer, payload.into(), false).await
    }

    async fn send_reply(
        &self,
        shard: &ShardName,
        peer: &str,
        payload: Vec<u8>,
        tcp: bool,
    ) -> Result<(), DataError> {
        let message = UnitToAgent {
            kind: Some(unit_to_agent::Kind::ReplyTo(
                tandem_proto::sdk::IngressReply {
                    shard: shard.0.clone(),
                    peer: peer.to_owned(),
                    payload,
                    tcp,
                },
            )),
        };
        self.outbox
            .send(message)
            .await
            .map_err(|_| DataError::Disconnected)
    }
}

/// A shard's checkpoint, seen from this unit. See the [module documentation](self). Cheap to
/// clone (each [`Transaction`] holds a clone).
#[derive(Debug, Clone)]
pub struct Checkpoint(Arc<CheckpointInner>);

#[derive(Debug)]
struct CheckpointInner {
    ctx: Context,
    shard: ShardName,
    /// The shard's queue of queued commits, looked up on first use (most checkpoints made
    /// for one `put` never need it).
    queue: std::sync::OnceLock<Arc<Queue>>,
}

impl CheckpointInner {
    fn queue(&self) -> &Arc<Queue> {
        self.queue.get_or_init(|| self.ctx.queue(&self.shard))
    }
}

impl Checkpoint {
    /// The shard.
    pub fn shard(&self) -> &ShardName {
        &self.0.shard
    }

    /// The value of `key` in the local replica, if any.
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, DataError> {
        match self
            .0
            .ctx
            .call(DataRequest::Get {
                shard: self.0.shard.clone(),
                key: key.as_ref().to_vec(),
            })
            .await?
        {
            DataReply::Value(section) => Ok(section.map(|section| Vec::from(section.value))),
            other => Err(DataError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Every key and value of the local replica, in key order (fetched in pages of about
    /// 1 MiB; a concurrent writer's changes may or may not be seen).
    pub async fn iterate(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, DataError> {
        let mut all = Vec::new();
        let mut start = Vec::new();
        loop {
            match self
                .0
                .ctx
                .call(DataRequest::Scan {
                    shard: self.0.shard.clone(),
                    start,
                    bytes_max: SCAN_PAGE_BYTES,
                })
                .await?
            {
                DataReply::Sections { sections, next } => {
                    all.extend(
                        sections
                            .into_iter()
                            .map(|(key, section)| (key, Vec::from(section.value))),
                    );
                    match next {
                        Some(next) => start = next,
                        None => return Ok(all),
                    }
                }
                other => return Err(DataError::Unexpected(format!("{other:?}"))),
            }
        }
    }

    /// Writes `key` = `value` in a commit of the service's `checkpoint_mode`: `sync` (the
    /// default) returns once every in-sync STANDBY has it, `async` once the local replica has
    /// it. Returns the replica's version after it.
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<u64, DataError> {
        let sync = !self.0.ctx.identity.checkpoint_async;
        self.transaction().put(key, value).commit(sync).await
    }

    /// Deletes `key`, in a commit of the service's `checkpoint_mode` (see [`put`](Self::put)).
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<u64, DataError> {
        let sync = !self.0.ctx.identity.checkpoint_async;
        self.transaction().delete(key).commit(sync).await
    }

    /// Starts a transaction: writes and a stream position committed together, atomically.
    pub fn transaction(&self) -> Transaction {
        Transaction {
            checkpoint: self.clone(),
            writes: Vec::new(),
            consumed: None,
        }
    }

    /// Waits until every earlier `async` and queued commit is where a `sync` one would be.
    /// Returns the replica's version then, or the first refusal of a queued commit since the
    /// last flush (reported once: the commits queued after the refused one were dropped, see
    /// [`Transaction::commit_queued`]).
    pub async fn flush(&self) -> Result<u64, DataError> {
        let queue = self.0.queue();
        queue.drained().await;
        queue.state.lock().take_outcome()?;
        match self
            .0
            .ctx
            .call(DataRequest::Flush {
                shard: self.0.shard.clone(),
            })
            .await?
        {
            DataReply::Done { version } => Ok(version),
            other => Err(DataError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Where the local replica stands.
    pub async fn position(&self) -> Result<Position, DataError> {
        match self
            .0
            .ctx
            .call(DataRequest::Position {
                shard: self.0.shard.clone(),
            })
            .await?
        {
            DataReply::Position {
                version,
                consumed,
                digest,
                sections,
                in_sync,
            } => Ok(Position {
                version,
                consumed,
                digest: digest.0,
                sections,
                in_sync,
            }),
            other => Err(DataError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Follows changes to the local replica (for a hot STANDBY): every op applied from now on
    /// arrives on the returned channel. A new subscription replaces an older one.
    pub async fn subscribe(&self) -> Result<mpsc::UnboundedReceiver<Change>, DataError> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.0
            .ctx
            .subscribers
            .lock()
            .insert(self.0.shard.clone(), tx);
        match self
            .0
            .ctx
            .call(DataRequest::Subscribe {
                shard: self.0.shard.clone(),
                on: true,
            })
            .await
        {
            Ok(_) => Ok(rx),
            Err(error) => {
                self.0.ctx.subscribers.lock().remove(&self.0.shard);
                Err(error)
            }
        }
    }
}

/// Writes (and optionally a stream position) committed together. Nothing is sent before
/// [`commit_sync`](Self::commit_sync), [`commit_async`](Self::commit_async) or
/// [`commit_queued`](Self::commit_queued).
#[derive(Debug, Clone)]
#[must_use = "a transaction does nothing until it is committed"]
pub struct Transaction {
    checkpoint: Checkpoint,
    writes: Vec<Write>,
    consumed: Option<u64>,
}

impl Transaction {
    /// Sets `key` to `value`.
    pub fn put(self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Self {
        self.write(key.into(), Some(value.into()), None)
    }

    /// Sets `key` to `value`, with a transfer priority: a higher priority is copied earlier
    /// when a new STANDBY is built (by default, sections that change most often go first).
    pub fn put_with_priority(
        self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        priority: u32,
    ) -> Self {
        self.write(key.into(), Some(value.into()), Some(priority))
    }

    /// Deletes `key`.
    pub fn delete(self, key: impl Into<Vec<u8>>) -> Self {
        self.write(key.into(), None, None)
    }

    /// Consumes the shard's stream up to and including message `seq` in the same commit.
    pub fn consume(mut self, seq: u64) -> Self {
        self.consumed = Some(self.consumed.map_or(seq, |old| old.max(seq)));
        self
    }

    fn write(mut self, key: Vec<u8>, value: Option<Vec<u8>>, priority: Option<u32>) -> Self {
        self.writes.push(Write {
            key,
            // Takes the Vec's buffer as it is (no copy).
            value: value.map(bytes::Bytes::from),
            priority,
        });
        self
    }

    /// Commits and waits until every in-sync STANDBY has applied it (or, with none, until it
    /// is on the local disk). Returns the replica's version after it.
    pub async fn commit_sync(self) -> Result<u64, DataError> {
        self.commit(true).await
    }

    /// Commits and returns once the local replica has it; STANDBYs follow within the
    /// service's `async_lag_max_ops` (the call waits when they lag more).
    pub async fn commit_async(self) -> Result<u64, DataError> {
        self.commit(false).await
    }

    /// Queues the commit and returns at once, without waiting for tandemd (write-behind): the
    /// fastest way to write a checkpoint. Queued commits of a shard leave in the background,
    /// merged into `async` commits of up to 4096 writes, two at most awaiting their answers
    /// at once (tandemd applies the second only right after the first); what tandemd applies
    /// is always a prefix of what was queued, in order. Waits only when the shard's queue is
    /// full ([`QUEUED_WRITES_MAX`], [`QUEUED_BYTES_MAX`]).
    ///
    /// Errors come later: when tandemd refuses a queued commit (the unit lost ACTIVE, its
    /// lease lapsed), the commits queued after it are dropped, and this call fails with that
    /// refusal until [`Checkpoint::flush`] reports it. Call `flush` where you need to know
    /// that everything so far is safe (it waits for the STANDBYs, like a `sync` commit). A
    /// planned quiesce (switchover) waits for the queue before it completes, so a switchover
    /// loses nothing queued; a failover may lose what the STANDBYs had not received, as with
    /// any `async` commit.
    pub async fn commit_queued(self) -> Result<(), DataError> {
        // Cooperate: a loop of commits that all fit would otherwise never yield, and on a
        // single-threaded runtime the SDK's own tasks (lease renewals, the flusher) would
        // starve.
        tokio::task::consume_budget().await;
        let epoch = self.acting_epoch()?;
        let checkpoint = &self.checkpoint;
        let queue = checkpoint.0.queue();
        let mut writes = self.writes;
        // The first try registers no waiter (the common case: there is room).
        let mut changed: Option<Pin<Box<tokio::sync::futures::Notified<'_>>>> = None;
        loop {
            if let Some(changed) = changed.as_mut() {
                changed.as_mut().enable();
            }
            let pushed = queue.state.lock().push(epoch, writes, self.consumed)?;
            match pushed {
                Pushed::Queued { wake } => {
                    if wake {
                        tokio::spawn(run_flusher(
                            checkpoint.0.ctx.clone(),
                            checkpoint.0.shard.clone(),
                            queue.clone(),
                        ));
                    }
                    return Ok(());
                }
                Pushed::Full(back) => {
                    writes = back;
                    match changed.take() {
                        // Registered before the last try: an answer since then woke it.
                        Some(waiting) => waiting.await,
                        None => changed = Some(Box::pin(queue.changed.notified())),
                    }
                }
            }
        }
    }

    /// Checks the writes and that the unit may write now; returns the shard's epoch.
    fn acting_epoch(&self) -> Result<u64, DataError> {
        let shard = &self.checkpoint.0.shard;
        tandem_core::data::check_writes(&self.writes).map_err(DataError::BadWrite)?;
        let ctx = &self.checkpoint.0.ctx;
        let role = {
            let beliefs = ctx.beliefs.lock();
            match beliefs.belief.role(shard) {
                Some((Role::Active | Role::Quiescing, epoch))
                    if beliefs.is_active(shard, crate::monotonic_now()) =>
                {
                    return Ok(epoch)
                }
                role => role,
            }
        };
        Err(DataError::NotActive {
            shard: shard.clone(),
            why: ctx.why_not_acting(role),
        })
    }

    async fn commit(self, sync: bool) -> Result<u64, DataError> {
        let shard = self.checkpoint.0.shard.clone();
        let epoch = self.acting_epoch()?;
        match self
            .checkpoint
            .0
            .ctx
            .call(DataRequest::Commit {
                shard,
                epoch,
                writes: self.writes,
                consumed: self.consumed,
                sync,
                chain: None,
            })
            .await?
        {
            DataReply::Committed { version } => Ok(version),
            other => Err(DataError::Unexpected(format!("{other:?}"))),
        }
    }
}

/// A reply as the caller sees it: a refusal is an error carrying its code.
fn outcome(reply: DataReply) -> Result<DataReply, DataError> {
    match reply {
        DataReply::Error { code, message } => Err(DataError::Refused { code, message }),
        reply => Ok(reply),
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use tandem_proto::frame::{encode_message_frame, FrameDecoder};
    use tandem_proto::sdk::{agent_to_unit, AgentToUnit};
    use tandem_proto::Message as _;

    use super::*;

    /// Every refusal tandemd can answer reaches the unit's code as itself: framed as the
    /// daemon frames it, decoded as the SDK's reader decodes it.
    #[test]
    fn every_refusal_code_crosses_the_sdk_socket_as_itself() {
        for code in RefusalCode::ALL {
            let reply = DataReply::Error {
                code,
                message: "why".into(),
            };
            let mut bytes = BytesMut::new();
            encode_message_frame(
                &AgentToUnit {
                    kind: Some(agent_to_unit::Kind::Answer(
                        tandem_proto::sdk_wire::encode_answer(7, &reply),
                    )),
                },
                &mut bytes,
            );
            let payload = FrameDecoder::new(crate::FRAME_LEN_MAX)
                .decode(&mut bytes)
                .expect("a whole frame")
                .expect("one frame");
            let Some(agent_to_unit::Kind::Answer(answer)) =
                AgentToUnit::decode(payload).expect("decodes").kind
            else {
                panic!("not an answer");
            };
            let (id, decoded) = tandem_proto::sdk_wire::decode_answer(answer).expect("decodes");
            assert_eq!(id, 7);
            match outcome(decoded) {
                Err(DataError::Refused { code: got, message }) => {
                    assert_eq!((got, message.as_str()), (code, "why"));
                }
                other => panic!("{code}: {other:?}"),
            }
        }
    }
}
