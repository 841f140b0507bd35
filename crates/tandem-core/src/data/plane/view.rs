//! What the data plane acts on: the committed facts about each shard ([`ShardView`]), for one
//! node ([`DataView`]), read from the cluster's committed state.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::{ClusterState, Role};
use crate::ids::{NodeId, ShardName, UnitName};

/// The committed facts about one shard that the data plane acts on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShardView {
    /// The shard's epoch.
    pub epoch: u64,
    /// The shard's version (of its roles).
    pub version: u64,
    /// The primary: the unit holding ACTIVE or QUIESCING, or the QUIESCED old ACTIVE of a
    /// handover; and its node.
    pub primary: Option<(UnitName, NodeId)>,
    /// The primary's unit holds ACTIVE (takes stream messages).
    pub active: bool,
    /// The primary's unit holds ACTIVE or QUIESCING (may commit).
    pub acting: bool,
    /// STANDBY units and their nodes.
    pub standbys: BTreeMap<UnitName, NodeId>,
    /// The instance (generation) of each STANDBY unit: it changes only when the cluster
    /// handled a fault of the unit (its daemon's restart among them), which took its role.
    pub standby_generations: BTreeMap<UnitName, u64>,
    /// STANDBYs the cluster committed as in sync at this epoch.
    pub in_sync: BTreeSet<UnitName>,
    /// The sequence number of the primary's claim that set `in_sync` (`ShardRecord::
    /// in_sync_claim`): no claim up to it can apply any more.
    pub in_sync_claim: u64,
    /// The cluster continues the shard at this epoch from what its primary's replica held in
    /// memory (`ShardRecord::synced_this_epoch`): when the epoch began, the primary was a
    /// STANDBY recorded in sync (or the previous ACTIVE again after such a promotion), so the
    /// promotion was judged lossless on the strength of that replica's contents.
    pub continued_in_memory: bool,
    /// Units of the shard's service placed on this node.
    pub local_units: BTreeSet<UnitName>,
    /// An async commit waits while a member of the wait set lags more ops than this.
    pub async_lag_max: u64,
}

/// The committed facts the data plane acts on, for one node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataView {
    /// Every shard of a single-ACTIVE service.
    pub shards: BTreeMap<ShardName, ShardView>,
}

impl DataView {
    /// The view of node `node` from the committed state.
    pub fn from_state(state: &ClusterState, node: NodeId) -> Self {
        let mut shards = BTreeMap::new();
        for shard in state.shards.values() {
            let Some(service) = state.topology.service(&shard.service) else {
                continue;
            };
            if service.model.multi_active() {
                continue;
            }
            let node_of = |unit: &UnitName| state.units.get(unit).map(|record| record.node);
            let acting = shard
                .roles
                .iter()
                .find(|(_, role)| role.is_acting())
                .map(|(unit, role)| (unit.clone(), *role));
            let handover_from = shard.handover.as_ref().and_then(|handover| {
                (shard.roles.get(&handover.from) == Some(&Role::Quiesced))
                    .then(|| handover.from.clone())
            });
            let (primary, role) = match (acting, handover_from) {
                (Some((unit, role)), _) => (Some(unit), Some(role)),
                (None, Some(unit)) => (Some(unit), Some(Role::Quiesced)),
                (None, None) => (None, None),
            };
            let primary = primary.and_then(|unit| node_of(&unit).map(|node| (unit, node)));
            let standbys = shard
                .units_in(Role::Standby)
                .filter_map(|unit| node_of(unit).map(|node| (unit.clone(), node)))
                .collect();
            let standby_generations = shard
                .units_in(Role::Standby)
                .filter_map(|unit| {
                    state
                        .units
                        .get(unit)
                        .map(|record| (unit.clone(), record.generation))
                })
                .collect();
            let local_units = state
                .units
                .values()
                .filter(|unit| unit.service == shard.service && unit.node == node)
                .map(|unit| unit.name.clone())
                .collect();
            shards.insert(
                shard.name.clone(),
                ShardView {
                    epoch: shard.epoch,
                    version: shard.version,
                    primary,
                    active: role == Some(Role::Active),
                    acting: role.is_some_and(Role::is_acting),
                    standbys,
                    standby_generations,
                    in_sync: shard.in_sync.clone(),
                    in_sync_claim: shard.in_sync_claim,
                    continued_in_memory: shard.synced_this_epoch,
                    local_units,
                    async_lag_max: service.checkpoint.async_lag_max_ops,
                },
            );
        }
        Self { shards }
    }
}
