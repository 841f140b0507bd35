//! tandem's decisions, sans-IO.
//!
//! This crate holds the replicated cluster model (nodes, the topology of services, units and
//! shards, and every shard's assignment), the commands the Raft log carries and the function
//! that applies them, the restart-escalation ladder, and the decisions made around them: the
//! leader's liveness tracker and director, and each node's agent. It never reads a clock,
//! draws a random number, touches a file or a socket: time arrives as [`Time`] inputs and
//! every decision comes back as a value for the caller to carry out. That is what lets
//! `tandem-sim` run whole clusters deterministically from one seed.

#![deny(missing_docs)]

pub mod agent;
pub mod belief;
pub mod cluster;
pub mod data;
pub mod director;
pub mod ids;
pub mod ladder;
pub mod lease;
pub mod liveness;
pub mod refusal;
pub mod report;
pub mod table;
pub mod time;
pub mod topology;
mod turn;

pub use agent::{Agent, AgentAction, StopSpec, UnitCommand, ASSIGN_BATCH_MAX, HOOKS_IN_FLIGHT_MAX};
pub use belief::UnitBelief;
pub use cluster::{
    AdminOp, AdminState, AdminTarget, ApplyOutcome, ClusterState, Command, FaultId, Handover,
    HandoverReason, HandoverUpdate, ModelEvent, NodeRecord, Role, RoleChange, ShardRecord,
    UnitRecord,
};
pub use director::{Director, SwitchoverTarget};
pub use ids::{NodeId, ServiceName, ShardName, UnitName};
pub use ladder::{FaultKind, FaultRecord, Ladder, Level, RecoveryAction, Severity};
pub use lease::{
    check_fencing_timers, fencing_bound, heartbeat_gap_max, heartbeat_ride_gap, lease_expiry_bound,
    AgentLease, GrantBook, GrantTiming, QuorumClock, DRIFT_PPM,
};
pub use liveness::{LivenessConfig, LivenessTracker, NodeReport};
pub use refusal::{AdminCode, Refusal};
pub use report::{
    confirmed_role, AgentReport, InSyncClaim, Judged, Observations, Presence, SettledRoles,
    UnitReport,
};
pub use time::Time;
pub use topology::{
    CheckpointSpec, EscalationPolicy, IngressSpec, ProcessSpec, RedundancyModel, ServiceSpec,
    Topology, UnitSpec, UnitTimeouts,
};
