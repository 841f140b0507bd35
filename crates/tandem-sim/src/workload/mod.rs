//! The workloads, one file each (as FoundationDB's workloads): what the simulated world asks
//! of the cluster while faults strike.
//!
//! - [`units`]: the simulated unit processes, their hooks, checkpoint writes and stream
//!   deliveries;
//! - [`stream`]: stream messages offered to the nodes' ingress;
//! - [`operator`]: clients' proposals and the operator's admin requests.

pub mod operator;
pub mod stream;
pub mod units;
