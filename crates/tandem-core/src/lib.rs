//! tandem's decisions, sans-IO.
//!
//! This crate holds the replicated cluster model, the commands the Raft log carries and the
//! function that applies them, and the leader's liveness tracker. It never reads a clock,
//! draws a random number, touches a file or a socket: time arrives as [`Time`] inputs and
//! every decision comes back as a value for the caller to carry out. That is what lets
//! `tandem-sim` run whole clusters deterministically from one seed.

#![deny(missing_docs)]

pub mod cluster;
pub mod liveness;
pub mod time;

pub use cluster::{ApplyOutcome, ClusterState, Command, NodeId, NodeRecord};
pub use liveness::{LivenessConfig, LivenessTracker, NodeReport};
pub use time::Time;
