//! The checkers: each invariant the simulation holds the cluster to, and the [`Violation`]
//! they report.
//!
//! - [`raft`]: election safety, leader completeness, committed entries never change (nor
//!   commit twice), ordered progress per node, equal models at equal indexes;
//! - [`data`]: no acknowledged sync write lost, stream messages applied exactly once and in
//!   order, replicas agree at quiescent points.

pub mod data;
pub mod raft;

use crate::FailureKind;

/// A broken invariant, before the simulation adds seed and time.
#[derive(Debug)]
pub struct Violation {
    /// Which invariant.
    pub kind: FailureKind,
    /// What was seen.
    pub detail: String,
}

/// A [`Violation`] of `kind`.
pub(crate) fn violation(kind: FailureKind, detail: String) -> Violation {
    Violation { kind, detail }
}
