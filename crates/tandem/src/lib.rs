//! The tandem SDK: what a stateful server links to take part in tandem's high availability.
//!
//! `tandemd` starts your process as a *unit* of a *service*, and assigns it roles for the
//! service's *shards*: ACTIVE (do the shard's work), STANDBY (be ready to take over),
//! QUIESCED (do none of it). You implement the [`Unit`] trait — one method per hook — and hand
//! it to [`run`], which connects to the local `tandemd`, calls your hooks one at a time, and
//! answers for you.
//!
//! **Acting safely.** A unit may do ACTIVE work only while its node holds a lease from the
//! cluster's quorum. The SDK enforces the lease on its own clock: when it runs out (the node
//! lost its quorum, or its daemon is paused or dead), [`Context::is_active`] turns false at
//! once and your `assign` hook is called with [`Role::Quiesced`] for every ACTIVE shard. The
//! roles stay the unit's, suspended: when the lease comes back, `assign` is called with
//! [`Role::Active`] again for those the cluster did not move meanwhile (tandemd first tells the
//! unit about those it did move). An ACTIVE role given while the node holds no lease waits
//! suspended the same way. Check [`Context::is_active`] before anything visible outside your
//! process (replying to a client, writing to a shared store), and two units will never act
//! ACTIVE for one shard at once.
//!
//! **Hooks and deadlines.** A hook must finish within the service's `callback_timeout_ms`
//! (health checks within `health_timeout_ms`), or tandem counts a fault and restarts the unit.
//! A hook that returns an error is a fault too. Hooks run one at a time, never concurrently,
//! in the order tandemd sent them. When tandemd hands a unit many roles at once (a start, a
//! failover onto it), it sends up to 64 assignments as one batch: `assign` runs for each in
//! turn, and the timeout covers the batch.
//!
//! **Faults.** [`Context::report_fault`] tells tandem something is wrong; the unit stops acting
//! ACTIVE at once, and tandem's restart-escalation ladder decides what happens next (a reset
//! in place, a restart, a relocation to another node).
//!
//! A complete minimal unit:
//!
//! ```no_run
//! use tandem::{Context, HookError, Role, ShardName, Unit};
//!
//! struct Echo;
//!
//! impl Unit for Echo {
//!     async fn assign(
//!         &mut self,
//!         ctx: &Context,
//!         shard: &ShardName,
//!         role: Role,
//!         epoch: u64,
//!     ) -> Result<(), HookError> {
//!         println!("{}: shard {shard} is now {role} (epoch {epoch})", ctx.unit());
//!         Ok(())
//!     }
//! }
//!
//! fn main() {
//!     // `run` returns when tandemd closes the connection (it stops or restarts the unit).
//!     // `tandem::runtime` builds the runtime units should run on (see there); a
//!     // `#[tokio::main]` runtime works too.
//!     let result = tandem::runtime().and_then(|runtime| runtime.block_on(tandem::run(Echo)));
//!     if let Err(error) = result {
//!         eprintln!("echo: {error}");
//!         std::process::exit(1);
//!     }
//! }
//! ```
//!
//! The unit gets its identity and the socket path from the environment `tandemd` sets
//! (`TANDEM_SOCKET`, `TANDEM_UNIT`, `TANDEM_TOKEN`, ...); a process not started by `tandemd`
//! gets [`Error::NotUnderTandem`].

#![deny(missing_docs)]

pub mod client;
pub mod data;
mod queue;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use parking_lot::Mutex;
use tandem_core::UnitCommand;
use tandem_io::QuietStream;
use tandem_proto::frame::FrameDecoder;
use tandem_proto::sdk::{self, agent_to_unit, unit_to_agent, AgentToUnit, UnitToAgent};
use tandem_proto::sdk_stream::{read_message, write_message, write_queued};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

pub use data::{Change, Checkpoint, DataError, Message, Position, Transaction};
pub use tandem_core::data::RefusalCode;
pub use tandem_core::{AdminCode, Role, Severity, ShardName};
pub use tandem_io::monotonic_ns;

/// The SDK protocol version (checked by `tandemd` at registration). 2: batches of
/// assignments (`AssignBatch`).
const PROTOCOL_VERSION: u32 = 2;
/// Largest frame accepted from `tandemd`.
const FRAME_LEN_MAX: usize = 16 * 1024 * 1024;
/// Messages (answers, reports, data calls) queued for sending; a full queue makes callers
/// wait (reports are dropped instead).
const OUTBOX_LEN_MAX: usize = 4096;

/// Why the unit could not run, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The environment lacks what `tandemd` gives its units.
    #[error(
        "{variable} is not set: this program must be started by tandemd as a unit of a service \
         (list it under [[services]] in the cluster config)"
    )]
    NotUnderTandem {
        /// The missing variable.
        variable: &'static str,
    },
    /// An environment variable has a value that makes no sense.
    #[error("{variable}={value:?} is not valid (was this program started by tandemd?)")]
    BadEnvironment {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
    },
    /// The agent's socket could not be reached.
    #[error("cannot connect to tandemd at {path}: {source} (is the node's tandemd running?)")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `tandemd` refused the registration.
    #[error("tandemd refused this unit: {reason}")]
    Refused {
        /// Its reason.
        reason: String,
    },
    /// The connection broke or carried something unreadable.
    #[error("lost the connection to tandemd: {reason}")]
    Disconnected {
        /// What happened.
        reason: String,
    },
    /// [`runtime`] could not build the tokio runtime.
    #[error("cannot start the tokio runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// A hook's failure. tandem counts it as a fault of the unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookError(String);

impl HookError {
    /// A failure described by `message` (shown to operators).
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// The description.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for HookError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HookError {}

impl From<String> for HookError {
    fn from(message: String) -> Self {
        Self(message)
    }
}

impl From<&str> for HookError {
    fn from(message: &str) -> Self {
        Self(message.to_owned())
    }
}

/// The hooks a unit implements. Only `assign` is required; the others default to doing
/// nothing successfully. Hooks run one at a time and must finish within their deadline.
pub trait Unit: Send + 'static {
    /// Take `role` for `shard`:
    /// - [`Role::Active`]: start doing the shard's work (check [`Context::is_active`] before
    ///   each externally visible action);
    /// - [`Role::Standby`]: be ready to take over (keep a warm copy of what you need);
    /// - [`Role::Quiesced`]: stop doing the shard's work now.
    ///
    /// `epoch` grows each time the shard gets a new ACTIVE; stamp it on what you write so
    /// that stale writers can be recognised.
    fn assign(
        &mut self,
        ctx: &Context,
        shard: &ShardName,
        role: Role,
        epoch: u64,
    ) -> impl Future<Output = Result<(), HookError>> + Send;

    /// Finish the shard's in-flight work and take no new work; returning means QUIESCED.
    /// Called before a planned switchover or shutdown. Commits queued with
    /// [`Transaction::commit_queued`] until it returns are applied before the switch goes on
    /// (the SDK waits for the queue before it answers).
    fn quiesce(
        &mut self,
        ctx: &Context,
        shard: &ShardName,
    ) -> impl Future<Output = Result<(), HookError>> + Send {
        let _ = (ctx, shard);
        async { Ok(()) }
    }

    /// Forget the shard (it no longer has any role here).
    fn remove(
        &mut self,
        ctx: &Context,
        shard: &ShardName,
    ) -> impl Future<Output = Result<(), HookError>> + Send {
        let _ = (ctx, shard);
        async { Ok(()) }
    }

    /// Answer whether the unit is healthy; an error or a late answer is a fault.
    fn health(&mut self, ctx: &Context) -> impl Future<Output = Result<(), HookError>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }

    /// A signaling message of `shard`'s stream (only while the unit acts ACTIVE for it; in
    /// stream order, each once per delivery round). Apply it and consume it in one commit:
    /// `ctx.checkpoint(shard).transaction().put(..).consume(message.seq).commit_sync()`. A
    /// message not consumed comes again after a failover or switchover, to the next ACTIVE.
    /// An error is logged and the message stays unconsumed.
    fn message(
        &mut self,
        ctx: &Context,
        shard: &ShardName,
        message: Message,
    ) -> impl Future<Output = Result<(), HookError>> + Send {
        let _ = (ctx, shard, message);
        async { Ok(()) }
    }

    /// Processing restriction of `shard` changed (an operator's `tandemctl restrict`): admit
    /// only this fraction (0.0 ..= 1.0) of *new* sessions, or all of them again (`None`). What
    /// a new session is, and how to refuse one (SIP: 503), is the unit's call; work already
    /// admitted goes on. [`Context::admitted`] tells the current value at any time.
    fn restrict(
        &mut self,
        ctx: &Context,
        shard: &ShardName,
        admit: Option<f64>,
    ) -> impl Future<Output = Result<(), HookError>> + Send {
        let _ = (ctx, shard, admit);
        async { Ok(()) }
    }

    /// Reset the part that failed, in place (the first rung of restart escalation, after a
    /// [`Severity::Transient`] fault).
    fn reset(&mut self, ctx: &Context) -> impl Future<Output = Result<(), HookError>> + Send {
        let _ = ctx;
        async { Ok(()) }
    }
}

/// Who this unit is, as `tandemd` told it.
#[derive(Debug, Clone)]
struct Identity {
    unit: String,
    service: String,
    node: String,
    generation: u64,
    reinitialise: bool,
    /// The service's `checkpoint_mode` is `async`.
    checkpoint_async: bool,
}

/// What the unit believes, shared by the hook runner and every [`Context`] clone.
#[derive(Debug, Default)]
struct Beliefs {
    belief: tandem_core::UnitBelief,
    /// Fraction of new sessions admitted, per restricted shard.
    restrictions: BTreeMap<ShardName, f64>,
    /// When the last lease renewal was read: a fence tells whether tandemd stopped renewing
    /// or this process did not read (its runtime was blocked).
    renewed_at: Option<tandem_core::Time>,
    /// Shards held ACTIVE that the application was told to stop (the lease ran out) or not
    /// yet told to start (assigned while the node held no lease): they resume when the lease
    /// is back.
    suspended: BTreeSet<ShardName>,
}

impl Beliefs {
    /// Whether the unit may act for `shard` at `now`.
    fn is_active(&self, shard: &ShardName, now: tandem_core::Time) -> bool {
        self.belief.is_acting(shard, now) && !self.suspended.contains(shard)
    }
}

/// The unit's view of itself and its way to talk to `tandemd`. Cheap to clone; safe to use
/// from any task.
#[derive(Debug, Clone)]
pub struct Context {
    identity: Arc<Identity>,
    beliefs: Arc<Mutex<Beliefs>>,
    /// Everything the unit sends goes through the writer task.
    outbox: mpsc::Sender<UnitToAgent>,
    calls: Arc<Mutex<data::Calls>>,
    subscribers: data::Subscribers,
    queues: data::Queues,
}

/// [`monotonic_ns`] as the core's `Time` (µs).
fn monotonic_now() -> tandem_core::Time {
    tandem_core::Time::from_micros(monotonic_ns() / 1000)
}

impl Context {
    /// This unit's name.
    pub fn unit(&self) -> &str {
        &self.identity.unit
    }

    /// Its service's name.
    pub fn service(&self) -> &str {
        &self.identity.service
    }

    /// The node it runs on.
    pub fn node(&self) -> &str {
        &self.identity.node
    }

    /// The instance number: it grows with every restart of the unit.
    pub fn generation(&self) -> u64 {
        self.identity.generation
    }

    /// Whether this instance should rebuild its local state instead of trusting it (restart
    /// escalation asked for it after repeated failures).
    pub fn reinitialise(&self) -> bool {
        self.identity.reinitialise
    }

    /// Whether the unit may act ACTIVE for `shard` right now: it holds ACTIVE (or is finishing
    /// in-flight work while QUIESCING) and its lease has not run out.
    pub fn is_active(&self, shard: &ShardName) -> bool {
        self.beliefs.lock().is_active(shard, monotonic_now())
    }

    /// Why the unit may not act for a shard it holds as `role`: the words of
    /// [`DataError::NotActive`](crate::DataError::NotActive).
    pub(crate) fn why_not_acting(&self, role: Option<(Role, u64)>) -> String {
        let lease_until = self.beliefs.lock().belief.lease_until();
        match role {
            None => "it holds no role for it".to_owned(),
            Some((role, epoch)) if !role.is_acting() => {
                format!("its role is {} at epoch {epoch}", role.name())
            }
            Some(_) => match lease_until {
                None => "its node holds no lease for it".to_owned(),
                Some(until) => {
                    let now = monotonic_now();
                    if until <= now {
                        format!(
                            "its lease ran out {:.1} ms ago and was not renewed",
                            now.saturating_since(until).as_secs_f64() * 1000.0
                        )
                    } else {
                        "its ACTIVE role is suspended since its lease last ran out, and not \
                         resumed yet"
                            .to_owned()
                    }
                }
            },
        }
    }

    /// The role the unit holds for `shard` and the shard's epoch, as last assigned.
    pub fn role(&self, shard: &ShardName) -> Option<(Role, u64)> {
        self.beliefs.lock().belief.role(shard)
    }

    /// Every role the unit holds, with the shard's epoch, as last assigned.
    pub fn roles(&self) -> BTreeMap<ShardName, (Role, u64)> {
        self.beliefs
            .lock()
            .belief
            .roles()
            .map(|(shard, role, epoch)| (shard.clone(), (role, epoch)))
            .collect()
    }

    /// The fraction (0.0 ..= 1.0) of new sessions of `shard` to admit: 1.0 unless an operator
    /// restricted it (see [`Unit::restrict`]).
    pub fn admitted(&self, shard: &ShardName) -> f64 {
        self.beliefs
            .lock()
            .restrictions
            .get(shard)
            .copied()
            .unwrap_or(1.0)
    }

    /// Every shard the unit may act ACTIVE for right now.
    pub fn active_shards(&self) -> Vec<ShardName> {
        let now = monotonic_now();
        let beliefs = self.beliefs.lock();
        beliefs
            .belief
            .roles()
            .filter(|(shard, _, _)| beliefs.is_active(shard, now))
            .map(|(shard, _, _)| shard.clone())
            .collect()
    }

    /// Reports a fault. The unit stops acting ACTIVE at once (and takes no ACTIVE role again
    /// until it is reset or restarted); tandem moves its shards to their STANDBYs and its
    /// escalation ladder decides the recovery.
    pub fn report_fault(&self, severity: Severity, message: impl Into<String>) {
        self.beliefs.lock().belief.on_fault();
        let report = UnitToAgent {
            kind: Some(unit_to_agent::Kind::Fault(sdk::ReportFault {
                severity: tandem_proto::state_wire::encode_severity(severity) as i32,
                message: message.into(),
            })),
        };
        if self.outbox.try_send(report).is_err() {
            tracing::warn!("fault report dropped: the connection to tandemd is gone or congested");
        }
    }

    /// [`Context::report_fault`], waiting for room in the queue to tandemd instead of dropping
    /// the report when it is full.
    async fn send_fault(&self, severity: Severity, message: String) -> Result<(), Error> {
        self.beliefs.lock().belief.on_fault();
        let report = UnitToAgent {
            kind: Some(unit_to_agent::Kind::Fault(sdk::ReportFault {
                severity: tandem_proto::state_wire::encode_severity(severity) as i32,
                message,
            })),
        };
        self.outbox
            .send(report)
            .await
            .map_err(|_| Error::Disconnected {
                reason: "the writer stopped".into(),
            })
    }

    /// Reports the unit's load on its own scale (e.g. percent of capacity).
    pub fn report_load(&self, load: u32) {
        let report = UnitToAgent {
            kind: Some(unit_to_agent::Kind::Load(sdk::ReportLoad { load })),
        };
        let _ = self.outbox.try_send(report);
    }
}

fn env(variable: &'static str) -> Result<String, Error> {
    std::env::var(variable).map_err(|_| Error::NotUnderTandem { variable })
}

fn disconnected(error: impl std::fmt::Display) -> Error {
    Error::Disconnected {
        reason: error.to_string(),
    }
}

/// Builds the tokio runtime to run a unit on (`tandem::runtime()?.block_on(tandem::run(..))`):
/// one thread, so that the SDK's socket task, its lease timer and your hooks hand work to each
/// other without waking another thread, and the node's idle polling.
///
/// Idle polling is the node's `cluster.unit_idle_poll_us` (off by default, whatever the
/// daemon's own `idle_poll_us`), which `tandemd` passes to its units as `TANDEM_IDLE_POLL_US`
/// (a service's `env` may set its own; absent means off): before the
/// thread sleeps, it polls for up to that long (the window adapts to how long the thread then
/// sleeps) for anything to do, so that an answer from `tandemd` (a sync commit's
/// acknowledgement, say) finds it running. On a virtual machine that halts
/// idle vCPUs without polling, that saves a wake-up through the hypervisor per answer (tens
/// of µs); it costs CPU time for up to the window after each burst of work. See
/// `tandem_io::idle_poll`.
///
/// A multi-threaded runtime (`#[tokio::main]`) works too; it does not poll.
pub fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    let window_us = idle_poll_us(std::env::var(IDLE_POLL_VARIABLE).ok())?;
    let (runtime, polling) =
        tandem_io::idle_poll::runtime(Duration::from_micros(window_us)).map_err(Error::Runtime)?;
    if let tandem_io::idle_poll::Polling::Unavailable(reason) = polling {
        tracing::warn!("idle polling off, though {IDLE_POLL_VARIABLE}={window_us}: {reason}");
    }
    Ok(runtime)
}

const IDLE_POLL_VARIABLE: &str = "TANDEM_IDLE_POLL_US";

/// The idle polling window, µs, from `TANDEM_IDLE_POLL_US`'s value (absent: 0).
fn idle_poll_us(value: Option<String>) -> Result<u64, Error> {
    let Some(text) = value else { return Ok(0) };
    match text.parse::<u64>() {
        Ok(us) if us <= tandem_io::idle_poll::IDLE_POLL_US_MAX => Ok(us),
        _ => Err(Error::BadEnvironment {
            variable: IDLE_POLL_VARIABLE,
            value: text,
        }),
    }
}

/// Connects to the local `tandemd` (from the environment it set), registers, and runs `unit`'s
/// hooks until `tandemd` closes the connection. On return the unit has quiesced everything;
/// exit the process then (tandem starts a new instance when it wants one).
pub async fn run<U: Unit>(mut unit: U) -> Result<(), Error> {
    let socket = PathBuf::from(env("TANDEM_SOCKET")?);
    let name = env("TANDEM_UNIT")?;
    let token = env("TANDEM_TOKEN")?;
    let generation_text = env("TANDEM_GENERATION")?;
    let generation = generation_text.parse().map_err(|_| Error::BadEnvironment {
        variable: "TANDEM_GENERATION",
        value: generation_text,
    })?;
    let connect_error = |source| Error::Connect {
        path: socket.clone(),
        source,
    };
    let stream = UnixStream::connect(&socket)
        .await
        .and_then(|stream| stream.into_std())
        .and_then(QuietStream::new)
        .map_err(connect_error)?;
    // Readable events only: a write never wakes this process (see `tandem_io`).
    let (mut read, mut write) = stream.into_split();
    let register = UnitToAgent {
        kind: Some(unit_to_agent::Kind::Register(sdk::Register {
            unit: name,
            generation,
            token,
            protocol: PROTOCOL_VERSION,
        })),
    };
    write_message(&mut write, &register)
        .await
        .map_err(disconnected)?;
    let decoder = FrameDecoder::new(FRAME_LEN_MAX);
    let mut buffer = BytesMut::new();
    let welcome =
        match read_message::<AgentToUnit>(&mut read, &decoder, &mut buffer, "agent message")
            .await
            .map_err(disconnected)?
        {
            Some(AgentToUnit {
                kind: Some(agent_to_unit::Kind::Welcome(welcome)),
            }) => welcome,
            Some(AgentToUnit {
                kind: Some(agent_to_unit::Kind::Refused(refused)),
            }) => {
                return Err(Error::Refused {
                    reason: refused.reason,
                })
            }
            _ => {
                return Err(Error::Disconnected {
                    reason: "tandemd did not answer the registration".into(),
                })
            }
        };
    let (outbox, mut outbox_rx) = mpsc::channel::<UnitToAgent>(OUTBOX_LEN_MAX);
    let ctx = Context {
        identity: Arc::new(Identity {
            unit: welcome.unit,
            service: welcome.service,
            node: welcome.node,
            generation: welcome.generation,
            reinitialise: welcome.reinitialise,
            checkpoint_async: welcome.checkpoint_async,
        }),
        beliefs: Arc::new(Mutex::new(Beliefs::default())),
        outbox,
        calls: Arc::new(Mutex::new(data::Calls::default())),
        subscribers: Arc::new(Mutex::new(Default::default())),
        queues: Arc::new(Mutex::new(Default::default())),
    };

    // The writer sends what every part of the unit queued, in order.
    // A burst (many commits in flight) goes out in one write.
    let writer = tokio::spawn(async move {
        write_queued(&mut outbox_rx, &mut write)
            .await
            .map_err(disconnected)
    });
    // The reader applies lease updates and answers at once (even while a hook runs) and
    // queues, in arrival order, what the hook runner handles.
    let (inbound_tx, mut inbound) = mpsc::unbounded_channel::<Inbound>();
    let reader_ctx = ctx.clone();
    let reader = tokio::spawn(async move {
        loop {
            let message = match read_message::<AgentToUnit>(
                &mut read,
                &decoder,
                &mut buffer,
                "agent message",
            )
            .await
            .map_err(disconnected)
            {
                Ok(Some(message)) => message,
                Ok(None) => return Ok(()),
                Err(error) => return Err(error),
            };
            let item = match message.kind {
                Some(agent_to_unit::Kind::Lease(lease)) => {
                    let until = lease
                        .valid_until_monotonic_ns
                        .map(|ns| tandem_core::Time::from_micros(ns / 1000));
                    let now = monotonic_now();
                    let resumed = {
                        let mut beliefs = reader_ctx.beliefs.lock();
                        beliefs.renewed_at = Some(now);
                        beliefs.belief.renew_lease(until, now)
                    };
                    if resumed.is_empty() {
                        continue;
                    }
                    Inbound::Resume(resumed)
                }
                Some(agent_to_unit::Kind::Request(request)) => Inbound::Request(request),
                Some(agent_to_unit::Kind::Restrict(restriction)) => {
                    let admit = restriction
                        .admitted_permille
                        .map(|permille| f64::from(permille.min(1000)) / 1000.0);
                    let shard = ShardName(restriction.shard);
                    {
                        let mut beliefs = reader_ctx.beliefs.lock();
                        let before = beliefs.restrictions.get(&shard).copied();
                        match admit {
                            Some(admit) => beliefs.restrictions.insert(shard.clone(), admit),
                            None => beliefs.restrictions.remove(&shard),
                        };
                        if before == admit {
                            continue;
                        }
                    }
                    Inbound::Restrict { shard, admit }
                }
                Some(agent_to_unit::Kind::Answer(answer)) => {
                    let (id, reply) =
                        tandem_proto::sdk_wire::decode_answer(answer).map_err(|error| {
                            Error::Disconnected {
                                reason: error.to_string(),
                            }
                        })?;
                    match reader_ctx.calls.lock().take(id) {
                        Some(data::Waiting::Reply(waiter)) => {
                            let _ = waiter.send(reply);
                            continue;
                        }
                        Some(data::Waiting::Round(shard)) => Inbound::RoundStarted {
                            shard,
                            id,
                            ok: !matches!(reply, tandem_core::data::DataReply::Error { .. }),
                        },
                        None => continue,
                    }
                }
                Some(agent_to_unit::Kind::Delivery(delivery)) => {
                    match tandem_proto::sdk_wire::decode_delivery(delivery).map_err(|error| {
                        Error::Disconnected {
                            reason: error.to_string(),
                        }
                    })? {
                        tandem_core::data::Delivery::Message {
                            shard,
                            epoch,
                            seq,
                            message,
                        } => Inbound::Message {
                            shard,
                            message: Message {
                                seq,
                                epoch,
                                payload: message.payload,
                                origin: message.origin.origin,
                                peer: message.origin.peer,
                            },
                        },
                        tandem_core::data::Delivery::Changed {
                            shard,
                            version,
                            writes,
                            reset,
                        } => {
                            let change = Change {
                                version,
                                writes: writes
                                    .into_iter()
                                    .map(|write| (write.key, write.value.map(Vec::from)))
                                    .collect(),
                                reset,
                            };
                            let mut subscribers = reader_ctx.subscribers.lock();
                            if let Some(subscriber) = subscribers.get(&shard) {
                                if subscriber.send(change).is_err() {
                                    subscribers.remove(&shard);
                                }
                            }
                            continue;
                        }
                    }
                }
                Some(_) | None => continue,
            };
            if inbound_tx.send(item).is_err() {
                return Ok(());
            }
        }
    });

    let mut streams = Streams::default();
    // What the SDK tells the application by itself (a lease ran out, or came back), one shard
    // at a time and after what tandemd sent: a health check never waits behind hundreds of
    // these.
    let mut local: VecDeque<Local> = VecDeque::new();
    let result = loop {
        // Wake at the lease deadline (at once without a lease) to stop what the lease no
        // longer covers; looked at once the local work is done (a walk over the roles), as
        // what it would stop cannot act anyway once the deadline passed.
        let deadline = if !local.is_empty() {
            None
        } else {
            let beliefs = ctx.beliefs.lock();
            let holds_acting = beliefs
                .belief
                .roles()
                .any(|(shard, role, _)| role.is_acting() && !beliefs.suspended.contains(shard));
            holds_acting.then(|| beliefs.belief.lease_until().unwrap_or_else(monotonic_now))
        };
        let sleep = match deadline {
            Some(until) => Duration::from_micros(
                until
                    .as_micros()
                    .saturating_sub(monotonic_now().as_micros()),
            ),
            None => Duration::from_secs(3600),
        };
        tokio::select! {
            biased;
            item = inbound.recv() => {
                let Some(item) = item else { break Ok(()) };
                if let Err(error) =
                    handle_inbound(&mut unit, &ctx, &mut streams, &mut local, item).await
                {
                    break Err(error);
                }
            }
            _ = tokio::time::sleep(sleep) => {
                let fenced = suspend(&ctx);
                if !fenced.is_empty() {
                    local.extend(fenced.iter().map(|(shard, epoch)| Local::Quiesce(shard.clone(), *epoch)));
                    let message = UnitToAgent {
                        kind: Some(unit_to_agent::Kind::Fenced(sdk::Fenced {
                            shards: fenced.into_iter().map(|(shard, _)| shard.0).collect(),
                        })),
                    };
                    if ctx.outbox.send(message).await.is_err() {
                        break Err(Error::Disconnected { reason: "the writer stopped".into() });
                    }
                }
            }
            _ = std::future::ready(()), if !local.is_empty() => {
                let work = local.pop_front().expect("not empty");
                if let Err(error) = run_local(&mut unit, &ctx, &mut streams, work).await {
                    break Err(error);
                }
                // Let the reader and the writer run: this branch is always ready.
                tokio::task::yield_now().await;
            }
        }
    };
    let result = match result {
        Ok(()) => match reader.await {
            Ok(Err(error)) => Err(error),
            _ => Ok(()),
        },
        Err(error) => {
            reader.abort();
            Err(error)
        }
    };
    writer.abort();
    // Whatever ends the connection, nothing may keep acting.
    ctx.beliefs.lock().belief.on_lease(None);
    let acting: Vec<ShardName> = {
        let beliefs = ctx.beliefs.lock();
        beliefs
            .belief
            .roles()
            .filter(|(_, role, _)| role.is_acting())
            .map(|(shard, _, _)| shard.clone())
            .collect()
    };
    quiesce_all(&mut unit, &ctx, &acting).await;
    match result {
        Ok(()) => Err(Error::Disconnected {
            reason: "tandemd closed the connection".into(),
        }),
        Err(error) => Err(error),
    }
}

/// What the reader hands the hook runner, in arrival order.
#[derive(Debug)]
enum Inbound {
    /// Run a hook.
    Request(sdk::Request),
    /// The lease is valid again: resume these ACTIVE shards (those suspended are assigned
    /// ACTIVE again) and ask for their streams again.
    Resume(Vec<(ShardName, u64)>),
    /// tandemd answered the request (call `id`) of a delivery round.
    RoundStarted { shard: ShardName, id: u64, ok: bool },
    /// A stream message.
    Message { shard: ShardName, message: Message },
    /// The shard's processing restriction changed.
    Restrict {
        shard: ShardName,
        admit: Option<f64>,
    },
}

/// The hook runner's stream bookkeeping.
#[derive(Debug, Default)]
struct Streams {
    /// Shards whose delivery round was asked for and not answered yet, with the id of the
    /// newest request: what arrives for them meanwhile belongs to an older round and is
    /// dropped, and only the newest request's answer starts the round.
    awaiting: BTreeMap<ShardName, u64>,
    /// The last message handed to the hook, per shard, in the current round.
    last: BTreeMap<ShardName, u64>,
}

impl Streams {
    /// Asks tandemd for `shard`'s stream from the first message not consumed (a new round).
    async fn start_round(
        &mut self,
        ctx: &Context,
        shard: ShardName,
        epoch: u64,
    ) -> Result<(), Error> {
        self.last.remove(&shard);
        let id = ctx
            .calls
            .lock()
            .register(data::Waiting::Round(shard.clone()));
        self.awaiting.insert(shard.clone(), id);
        let request = tandem_core::data::DataRequest::Deliver { shard, epoch };
        let message = UnitToAgent {
            kind: Some(unit_to_agent::Kind::Data(
                tandem_proto::sdk_wire::encode_call(id, request),
            )),
        };
        ctx.outbox
            .send(message)
            .await
            .map_err(|_| Error::Disconnected {
                reason: "the writer stopped".into(),
            })
    }
}

/// Handles one inbound item in the hook runner.
async fn handle_inbound<U: Unit>(
    unit: &mut U,
    ctx: &Context,
    streams: &mut Streams,
    local: &mut VecDeque<Local>,
    item: Inbound,
) -> Result<(), Error> {
    match item {
        Inbound::Request(request) => {
            let (reply, activated) = handle_request(unit, ctx, request).await;
            ctx.outbox
                .send(reply)
                .await
                .map_err(|_| Error::Disconnected {
                    reason: "the writer stopped".into(),
                })?;
            for (shard, epoch) in activated {
                streams.start_round(ctx, shard, epoch).await?;
            }
        }
        Inbound::Resume(shards) => {
            for (shard, epoch) in shards {
                if ctx.role(&shard) != Some((Role::Active, epoch)) {
                    continue;
                }
                let suspended = ctx.beliefs.lock().suspended.contains(&shard);
                if suspended {
                    local.push_back(Local::Resume(shard, epoch));
                } else {
                    streams.start_round(ctx, shard, epoch).await?;
                }
            }
        }
        Inbound::Restrict { shard, admit } => {
            tracing::info!(%shard, ?admit, "processing restriction changed");
            if let Err(error) = unit.restrict(ctx, &shard, admit).await {
                tracing::warn!(%shard, %error, "the restrict hook failed");
            }
        }
        Inbound::RoundStarted { shard, id, ok } => {
            if streams.awaiting.get(&shard) != Some(&id) {
                // An older round's answer: the newer round has not started yet.
                return Ok(());
            }
            streams.awaiting.remove(&shard);
            if !ok {
                tracing::debug!(%shard, "no stream for this shard (no checkpoint replica here)");
            }
        }
        Inbound::Message { shard, message } => {
            if streams.awaiting.contains_key(&shard) || !ctx.is_active(&shard) {
                return Ok(());
            }
            if streams
                .last
                .get(&shard)
                .is_some_and(|last| message.seq <= *last)
            {
                return Ok(());
            }
            streams.last.insert(shard.clone(), message.seq);
            let seq = message.seq;
            if let Err(error) = unit.message(ctx, &shard, message).await {
                tracing::warn!(%shard, seq, %error, "the message hook failed; the message stays unconsumed");
            }
        }
    }
    Ok(())
}

/// What the SDK tells the application by itself, queued behind what tandemd sends.
#[derive(Debug)]
enum Local {
    /// The lease ran out: `assign(QUIESCED)` for a suspended ACTIVE role (at this epoch).
    Quiesce(ShardName, u64),
    /// The lease is back: `assign(ACTIVE)` for a suspended role still held at this epoch,
    /// which then acts again.
    Resume(ShardName, u64),
}

/// The lease ran out: suspends every acting role not suspended yet (the unit stops acting
/// for them at once) and returns them, to be quiesced one by one. Logs one warning for all
/// of them: a unit with thousands of ACTIVE shards fences them all at once.
fn suspend(ctx: &Context) -> Vec<(ShardName, u64)> {
    let now = monotonic_now();
    let mut beliefs = ctx.beliefs.lock();
    let fenced: Vec<(ShardName, u64)> = beliefs
        .belief
        .fenced(now)
        .into_iter()
        .filter(|shard| !beliefs.suspended.contains(shard))
        .map(|shard| {
            let epoch = beliefs.belief.role(&shard).map_or(0, |(_, epoch)| epoch);
            (shard, epoch)
        })
        .collect();
    beliefs
        .suspended
        .extend(fenced.iter().map(|(shard, _)| shard.clone()));
    if let Some((first, _)) = fenced.first() {
        let ms_ago = |at: Option<tandem_core::Time>| {
            at.map(|at| now.saturating_since(at).as_secs_f64() * 1000.0)
        };
        tracing::warn!(
            shards = fenced.len(),
            %first,
            lease_ended_ms_ago = ms_ago(beliefs.belief.lease_until()),
            last_renewal_ms_ago = ms_ago(beliefs.renewed_at),
            "lease ran out: every ACTIVE shard is suspended and quiesced until the lease is \
             back (if tandemd logged no lease lapse then, this process did not read its \
             renewals in time: its runtime was blocked)"
        );
    }
    fenced
}

/// Tells the application what the SDK decided by itself (see [`Local`]).
async fn run_local<U: Unit>(
    unit: &mut U,
    ctx: &Context,
    streams: &mut Streams,
    work: Local,
) -> Result<(), Error> {
    match work {
        Local::Quiesce(shard, epoch) => {
            // Unless a hook from tandemd changed the role meanwhile, or it resumed.
            if !ctx.beliefs.lock().suspended.contains(&shard) {
                return Ok(());
            }
            if let Err(error) = unit.assign(ctx, &shard, Role::Quiesced, epoch).await {
                tracing::warn!(%shard, %error, "the quiesce hook failed while fencing");
            }
        }
        Local::Resume(shard, epoch) => {
            {
                let beliefs = ctx.beliefs.lock();
                // A lease that ran out again leaves the role suspended: the next one resumes
                // it.
                if !beliefs.belief.has_lease(monotonic_now())
                    || !beliefs.suspended.contains(&shard)
                    || beliefs.belief.role(&shard) != Some((Role::Active, epoch))
                {
                    return Ok(());
                }
            }
            let outcome = unit.assign(ctx, &shard, Role::Active, epoch).await;
            // The application was told ACTIVE (or failed to take it): the role is no longer
            // suspended either way.
            ctx.beliefs.lock().suspended.remove(&shard);
            if let Err(error) = outcome {
                // As a failed ACTIVE hook that tandemd sent would be: a fault, sent reliably.
                return ctx
                    .send_fault(
                        Severity::Restart,
                        format!("the assign hook failed resuming {shard} ACTIVE: {error}"),
                    )
                    .await;
            }
            if ctx.role(&shard) == Some((Role::Active, epoch)) {
                streams.start_round(ctx, shard, epoch).await?;
            }
        }
    }
    Ok(())
}

/// The connection to tandemd ended: quiesces `shards` for good (their `assign` hook with
/// QUIESCED), nothing may keep acting.
async fn quiesce_all<U: Unit>(unit: &mut U, ctx: &Context, shards: &[ShardName]) {
    if let Some(first) = shards.first() {
        tracing::warn!(
            shards = shards.len(),
            %first,
            "the connection to tandemd ended: quiescing every ACTIVE shard"
        );
    }
    for shard in shards {
        let epoch = ctx.role(shard).map_or(0, |(_, epoch)| epoch);
        if let Err(error) = unit.assign(ctx, shard, Role::Quiesced, epoch).await {
            tracing::warn!(%shard, %error, "the quiesce hook failed while fencing");
        }
        let command = UnitCommand::Assign {
            shard: shard.clone(),
            role: Role::Quiesced,
            epoch,
        };
        ctx.beliefs.lock().belief.on_done(&command);
    }
}

/// A role as `proto/state.proto` numbers it; `None` for "no role" or an unknown value.
fn role_from_wire(value: i32) -> Option<Role> {
    use tandem_proto::state::Role as Wire;
    match Wire::try_from(value).ok()? {
        Wire::Active => Some(Role::Active),
        Wire::Standby => Some(Role::Standby),
        Wire::Quiescing => Some(Role::Quiescing),
        Wire::Quiesced => Some(Role::Quiesced),
        Wire::None => None,
    }
}

/// The assignment `assign` names, or why it cannot be carried out.
fn assign_from_wire(assign: sdk::Assign) -> Result<UnitCommand, String> {
    match role_from_wire(assign.role) {
        Some(role) => Ok(UnitCommand::Assign {
            shard: ShardName(assign.shard),
            role,
            epoch: assign.epoch,
        }),
        None => Err(format!("tandemd sent an unknown role {}", assign.role)),
    }
}

/// Runs the hook a request asks for (each hook of a batch, in order) and builds the reply.
/// Also returns the shards and epochs the unit just took ACTIVE (their streams are asked
/// for).
async fn handle_request<U: Unit>(
    unit: &mut U,
    ctx: &Context,
    request: sdk::Request,
) -> (UnitToAgent, Vec<(ShardName, u64)>) {
    let command = match request.kind {
        Some(sdk::request::Kind::Assign(assign)) => assign_from_wire(assign),
        Some(sdk::request::Kind::Batch(batch)) => {
            if batch.assigns.is_empty() || batch.assigns.len() > tandem_core::ASSIGN_BATCH_MAX {
                Err(format!(
                    "tandemd sent a batch of {} assignments (1 to {} expected)",
                    batch.assigns.len(),
                    tandem_core::ASSIGN_BATCH_MAX
                ))
            } else {
                batch
                    .assigns
                    .into_iter()
                    .map(assign_from_wire)
                    .collect::<Result<Vec<_>, _>>()
                    .map(UnitCommand::Batch)
            }
        }
        Some(sdk::request::Kind::Quiesce(quiesce)) => Ok(UnitCommand::Quiesce {
            shard: ShardName(quiesce.shard),
            epoch: quiesce.epoch,
        }),
        Some(sdk::request::Kind::Remove(remove)) => Ok(UnitCommand::Remove {
            shard: ShardName(remove.shard),
        }),
        Some(sdk::request::Kind::Health(_)) => Ok(UnitCommand::Health),
        Some(sdk::request::Kind::Reset(_)) => Ok(UnitCommand::Reset),
        None => Err("tandemd sent an empty request (is this SDK older than tandemd?)".to_owned()),
    };
    let mut activated = Vec::new();
    let result = match command {
        Err(message) => Err(message),
        Ok(command) => {
            let mut result = Ok(());
            for part in command.parts() {
                result = run_hook(unit, ctx, part, &mut activated).await;
                if result.is_err() {
                    break;
                }
            }
            result
        }
    };
    let reply = UnitToAgent {
        kind: Some(unit_to_agent::Kind::Reply(sdk::Reply {
            request: request.id,
            error: result.err(),
        })),
    };
    (reply, activated)
}

/// Runs the application's hook for one command (never a batch), keeping the unit's beliefs.
async fn run_hook<U: Unit>(
    unit: &mut U,
    ctx: &Context,
    command: &UnitCommand,
    activated: &mut Vec<(ShardName, u64)>,
) -> Result<(), String> {
    // Whether the role is held suspended now (ACTIVE without a lease), or was until this
    // command.
    let (hold, was_suspended) = {
        let mut beliefs = ctx.beliefs.lock();
        beliefs.belief.on_request(command);
        match (command, command.shard()) {
            // ACTIVE without a lease: held suspended until the lease is back (the Resume).
            (
                UnitCommand::Assign {
                    role: Role::Active, ..
                },
                Some(shard),
            ) if !beliefs.belief.has_lease(monotonic_now()) => {
                (true, !beliefs.suspended.insert(shard.clone()))
            }
            // Suspended until the application heard of the new role.
            (_, Some(shard)) => (false, beliefs.suspended.contains(shard)),
            (_, None) => (false, false),
        }
    };
    let outcome = match command {
        // The application hears of the role when the lease is back (the Resume).
        UnitCommand::Assign { .. } if hold => Ok(()),
        UnitCommand::Assign { shard, role, epoch } => unit.assign(ctx, shard, *role, *epoch).await,
        UnitCommand::Quiesce { shard, .. } => {
            let outcome = unit.quiesce(ctx, shard).await;
            // What the unit queued reaches the replica before the switch.
            ctx.queued_commits_answered(shard).await;
            outcome
        }
        UnitCommand::Remove { shard } => unit.remove(ctx, shard).await,
        UnitCommand::Health => unit.health(ctx).await,
        UnitCommand::Reset => unit.reset(ctx).await,
        UnitCommand::Batch(_) => unreachable!("a batch is run part by part"),
    };
    match outcome {
        Ok(()) => {
            {
                let mut beliefs = ctx.beliefs.lock();
                beliefs.belief.on_done(command);
                // The application heard of the role that replaces the suspended one.
                if was_suspended && !hold {
                    if let Some(shard) = command.shard() {
                        beliefs.suspended.remove(shard);
                    }
                }
            }
            if let UnitCommand::Assign {
                shard,
                role: Role::Active,
                epoch,
            } = command
            {
                if !hold && ctx.role(shard) == Some((Role::Active, *epoch)) {
                    activated.push((shard.clone(), *epoch));
                }
            }
            Ok(())
        }
        Err(error) => Err(error.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_poll_window_comes_from_the_environment_within_bounds() {
        assert_eq!(idle_poll_us(None).unwrap(), 0);
        assert_eq!(idle_poll_us(Some("200".into())).unwrap(), 200);
        assert_eq!(idle_poll_us(Some("10000".into())).unwrap(), 10_000);
        for bad in ["10001", "-1", "fast", ""] {
            let error = idle_poll_us(Some(bad.into())).unwrap_err();
            assert!(
                error.to_string().contains("TANDEM_IDLE_POLL_US")
                    && error.to_string().contains(bad),
                "{error}"
            );
        }
    }
}
