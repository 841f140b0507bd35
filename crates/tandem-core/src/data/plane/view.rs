//! What the data plane acts on: the committed facts about each shard ([`ShardView`]), for one
//! node ([`DataView`]), read from the cluster's committed state.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::{Changes, ClusterState, Role, ShardRecord};
use crate::ids::{NodeId, ServiceName, ShardName, UnitName};

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
        let mut local = LocalUnits::default();
        let shards = state
            .shards
            .values()
            .filter_map(|shard| {
                Some((
                    shard.name.clone(),
                    shard_view(state, node, shard, &mut local)?,
                ))
            })
            .collect();
        Self { shards }
    }

    /// What `changes` did to this view, given the new `state`, looking only at what they can
    /// have changed: the changed shards, and every shard of a service whose units changed (a
    /// unit's node or instance shows in its shards' views); with a new topology, every shard.
    /// Returns the shards whose view differs, with the new view (`None`: gone); apply them
    /// with `DataPlane::update_view`.
    pub fn changes(
        &self,
        state: &ClusterState,
        node: NodeId,
        changes: &Changes,
    ) -> BTreeMap<ShardName, Option<ShardView>> {
        let candidates: BTreeSet<ShardName> = if changes.topology {
            state
                .shards
                .keys()
                .chain(self.shards.keys())
                .cloned()
                .collect()
        } else {
            let mut candidates = changes.shards.clone();
            for unit in &changes.units {
                let service = state.units.get(unit).map(|record| &record.service);
                if let Some(spec) = service.and_then(|service| state.topology.service(service)) {
                    candidates.extend(spec.shards.iter().cloned());
                }
                candidates.extend(state.shards_naming(unit).map(|shard| shard.name.clone()));
            }
            candidates
        };
        let mut local = LocalUnits::default();
        let mut changed = BTreeMap::new();
        for name in candidates {
            let view = state
                .shards
                .get(&name)
                .and_then(|shard| shard_view(state, node, shard, &mut local));
            if self.shards.get(&name) != view.as_ref() {
                changed.insert(name, view);
            }
        }
        changed
    }
}

/// Units of each service placed on the node, worked out once per service.
#[derive(Default)]
struct LocalUnits(BTreeMap<ServiceName, BTreeSet<UnitName>>);

impl LocalUnits {
    fn of(
        &mut self,
        state: &ClusterState,
        node: NodeId,
        service: &ServiceName,
    ) -> BTreeSet<UnitName> {
        self.0
            .entry(service.clone())
            .or_insert_with(|| {
                state
                    .units
                    .values()
                    .filter(|unit| &unit.service == service && unit.node == node)
                    .map(|unit| unit.name.clone())
                    .collect()
            })
            .clone()
    }
}

/// The view of one shard from node `node`; `None` for shards of multi-ACTIVE services.
fn shard_view(
    state: &ClusterState,
    node: NodeId,
    shard: &ShardRecord,
    local: &mut LocalUnits,
) -> Option<ShardView> {
    let service = state.topology.service(&shard.service)?;
    if service.model.multi_active() {
        return None;
    }
    let node_of = |unit: &UnitName| state.units.get(unit).map(|record| record.node);
    let acting = shard
        .roles
        .iter()
        .find(|(_, role)| role.is_acting())
        .map(|(unit, role)| (unit.clone(), *role));
    let handover_from = shard.handover.as_ref().and_then(|handover| {
        (shard.roles.get(&handover.from) == Some(&Role::Quiesced)).then(|| handover.from.clone())
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
    Some(ShardView {
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
        local_units: local.of(state, node, &shard.service),
        async_lag_max: service.checkpoint.async_lag_max_ops,
    })
}
