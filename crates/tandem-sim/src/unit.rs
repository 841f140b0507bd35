//! Simulated unit processes. A unit answers its agent's requests after a delay, keeps its
//! beliefs with the SDK's own bookkeeping ([`tandem_core::UnitBelief`]), and can crash, hang,
//! answer late (past the hook timeout), fail a hook or report a fault, as the fault generator
//! decides.

use tandem_core::{UnitBelief, UnitName};

use crate::data::UnitData;

/// One unit process. A unit may briefly have two (an old instance stopping on one node while a
/// relocated one starts on another), so processes are known by pid.
#[derive(Debug, Clone)]
pub struct SimUnit {
    /// The unit it is an instance of.
    pub unit: UnitName,
    /// Index of the node it runs on.
    pub node: usize,
    /// The node's life it was started in (a node crash kills it).
    pub life: u64,
    /// The instance.
    pub generation: u64,
    /// Its pid (unique in the run).
    pub pid: u32,
    /// What it believes it holds.
    pub belief: UnitBelief,
    /// A hung unit answers nothing and takes in nothing new; its beliefs freeze (its lease
    /// still runs out on its clock).
    pub hung: bool,
    /// Its data requests and stream deliveries.
    pub data: UnitData,
}
