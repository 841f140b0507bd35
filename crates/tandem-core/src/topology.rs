//! The cluster's topology: services, their units and shards, and how units are run.
//!
//! The topology comes from the config file; the leader commits it through Raft
//! (`Command::SetTopology`) so that every node, and every future leader, works from the same
//! definition. Agents start units from the committed topology, not from their own file.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::ids::{is_valid_name, NodeId, ServiceName, ShardName, UnitName};

/// How a service's shards are assigned to its units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RedundancyModel {
    /// One ACTIVE and one STANDBY unit for every shard; all shards share the same ACTIVE unit
    /// and the same STANDBY unit. Further units are spares.
    TwoN,
    /// Every shard has one ACTIVE and one STANDBY. The first `active_units` units (by
    /// preference) carry the ACTIVEs, the others the STANDBYs (a spare node may host the
    /// standbys of many actives).
    NPlusM {
        /// How many units carry ACTIVE shards.
        active_units: u32,
    },
    /// Every shard is ACTIVE on several units at once and has no STANDBY.
    NWayActive {
        /// ACTIVEs per shard; 0 means every unit.
        actives_per_shard: u32,
    },
    /// Every shard is ACTIVE on one unit and has no STANDBY; recovery is a restart or a
    /// re-placement.
    NoRedundancy,
}

impl RedundancyModel {
    /// Whether shards of this model have a STANDBY.
    pub fn has_standby(self) -> bool {
        matches!(self, Self::TwoN | Self::NPlusM { .. })
    }

    /// Whether a shard may be ACTIVE on more than one unit at once.
    pub fn multi_active(self) -> bool {
        matches!(self, Self::NWayActive { .. })
    }

    /// The name used in config files and status (`2n`, `n+m`, `n-way-active`, `none`).
    pub fn name(self) -> &'static str {
        match self {
            Self::TwoN => "2n",
            Self::NPlusM { .. } => "n+m",
            Self::NWayActive { .. } => "n-way-active",
            Self::NoRedundancy => "none",
        }
    }
}

impl fmt::Display for RedundancyModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A command the agent runs: argv, extra environment and working directory.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct ProcessSpec {
    /// Program and arguments; never empty.
    pub argv: Vec<String>,
    /// Extra environment variables (on top of the daemon's own and tandem's `TANDEM_*`).
    pub env: BTreeMap<String, String>,
    /// Working directory; the daemon's when `None`.
    pub working_dir: Option<String>,
}

/// Timers of a service's units, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UnitTimeouts {
    /// From process start until the unit must have registered through the SDK.
    pub instantiate_ms: u64,
    /// How long a graceful stop (terminate command, or SIGTERM) may take before SIGKILL.
    pub terminate_ms: u64,
    /// How long the cleanup command may run.
    pub cleanup_ms: u64,
    /// Period of health checks.
    pub health_interval_ms: u64,
    /// A health check not answered within this is a fault.
    pub health_timeout_ms: u64,
    /// A role-change hook (`assign`, `quiesce`, `remove`, `reset`) not answered within this is
    /// a fault.
    pub callback_ms: u64,
}

impl Default for UnitTimeouts {
    fn default() -> Self {
        Self {
            instantiate_ms: 10_000,
            terminate_ms: 2_000,
            cleanup_ms: 2_000,
            health_interval_ms: 100,
            health_timeout_ms: 300,
            callback_ms: 2_000,
        }
    }
}

/// A service's restart-escalation policy (SPEC 4.3, seed 004). Each level's counter counts the
/// faults handled at that level within `window_ms`; a fault that would exceed the level's
/// maximum is handled one level up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EscalationPolicy {
    /// Faults handled by `reset` (L0) within the window before escalating.
    pub reset_max: u32,
    /// Faults handled by a restart (L1) within the window before escalating.
    pub restart_max: u32,
    /// Faults handled by a restart that rebuilds the local replica (L2) before escalating.
    pub reinitialise_max: u32,
    /// Faults handled by restarting every unit of the node (L3) before escalating.
    pub node_restart_max: u32,
    /// The probation window; a level's counter starts over when it has passed since the first
    /// fault counted in it.
    pub window_ms: u64,
    /// Whether a unit may be re-created on another node (L5, also the fast path for node-class
    /// faults). Without it, the ladder's top is "disabled until repaired".
    pub relocate: bool,
}

impl Default for EscalationPolicy {
    fn default() -> Self {
        Self {
            reset_max: 1,
            restart_max: 3,
            reinitialise_max: 1,
            node_restart_max: 1,
            window_ms: 60_000,
            relocate: true,
        }
    }
}

/// One unit of a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnitSpec {
    /// Unique name in the cluster.
    pub name: UnitName,
    /// The node it is placed on (until an L5 relocation moves it).
    pub node: NodeId,
    /// Preference: lower ranks get ACTIVE assignments first (ties: config order).
    pub rank: u32,
}

/// One service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceSpec {
    /// Unique name.
    pub name: ServiceName,
    /// Redundancy model.
    pub model: RedundancyModel,
    /// Its units, in config order.
    pub units: Vec<UnitSpec>,
    /// Its shards, in config order.
    pub shards: Vec<ShardName>,
    /// How a unit's process is started.
    pub instantiate: ProcessSpec,
    /// Optional graceful-stop command (else SIGTERM to the unit's process group).
    pub terminate: Option<ProcessSpec>,
    /// Optional command run after a unit stopped or was killed.
    pub cleanup: Option<ProcessSpec>,
    /// Timers.
    pub timeouts: UnitTimeouts,
    /// Restart escalation.
    pub escalation: EscalationPolicy,
    /// Most shards one unit may hold (any role); 0 means no limit.
    pub max_shards_per_unit: u32,
    /// Whether a shard's ACTIVE and STANDBY may share a node.
    pub allow_colocation: bool,
    /// How its checkpoints replicate.
    pub checkpoint: CheckpointSpec,
    /// Addresses that follow each shard's ACTIVE.
    pub ingress: BTreeMap<ShardName, IngressSpec>,
    /// Optional commands run on a node when it takes or gives up a shard's ingress (e.g. to
    /// move a real virtual IP). They get `TANDEM_SHARD`, `TANDEM_UDP`, `TANDEM_VIP`
    /// (`up` or `down`) and `TANDEM_NODE`.
    pub vip_up: Option<ProcessSpec>,
    /// See `vip_up`.
    pub vip_down: Option<ProcessSpec>,
}

/// How a service's checkpoints replicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CheckpointSpec {
    /// A commit without an explicit mode waits for every in-sync STANDBY (`true`) or returns
    /// at once (`false`).
    pub sync: bool,
    /// An async commit waits while an in-sync STANDBY lags more than this many ops behind.
    pub async_lag_max_ops: u64,
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        Self {
            sync: true,
            async_lag_max_ops: 10_000,
        }
    }
}

/// Addresses bound by the agent of a shard's ACTIVE.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct IngressSpec {
    /// A UDP address (`ip:port`).
    pub udp: Option<String>,
    /// A TCP address (`ip:port`).
    pub tcp: Option<String>,
}

/// The whole topology.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct Topology {
    /// Services, in config order.
    pub services: Vec<ServiceSpec>,
    /// Node preference for placement and relocation: lower first (ties: node id). Nodes not
    /// listed have rank 0.
    pub node_ranks: BTreeMap<NodeId, u32>,
    /// Optional command an agent runs for an L3 node restart, after stopping its units (e.g. a
    /// VM reboot).
    pub node_restart: Option<ProcessSpec>,
}

/// Why a topology is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Hash)]
#[error("{path}: {message}")]
pub struct TopologyError {
    /// Where, as a config key (e.g. `services[0].units[1].node`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn topology_error(path: String, message: String) -> TopologyError {
    TopologyError { path, message }
}

impl Topology {
    /// Checks names, uniqueness, nodes and model parameters against the members `nodes`.
    pub fn validate(&self, nodes: &BTreeSet<NodeId>) -> Result<(), TopologyError> {
        let mut services = BTreeSet::new();
        let mut units = BTreeSet::new();
        let mut shards = BTreeSet::new();
        for (index, service) in self.services.iter().enumerate() {
            let path = format!("services[{index}]");
            if !is_valid_name(service.name.as_str()) {
                return Err(topology_error(
                    format!("{path}.name"),
                    format!(
                        "{:?} is not a valid name (1 to 64 of A-Z a-z 0-9 _ . -)",
                        service.name.as_str()
                    ),
                ));
            }
            if !services.insert(service.name.clone()) {
                return Err(topology_error(
                    format!("{path}.name"),
                    format!("service {} is defined twice", service.name),
                ));
            }
            if service.instantiate.argv.is_empty() || service.instantiate.argv[0].is_empty() {
                return Err(topology_error(
                    format!("{path}.instantiate"),
                    "must name a program to run".into(),
                ));
            }
            for (key, spec) in [
                ("terminate", &service.terminate),
                ("cleanup", &service.cleanup),
            ] {
                if spec.as_ref().is_some_and(|spec| spec.argv.is_empty()) {
                    return Err(topology_error(
                        format!("{path}.{key}"),
                        "must name a program to run (or leave the key out)".into(),
                    ));
                }
            }
            if service.units.is_empty() {
                return Err(topology_error(
                    format!("{path}.units"),
                    "a service needs at least one unit".into(),
                ));
            }
            for (unit_index, unit) in service.units.iter().enumerate() {
                let unit_path = format!("{path}.units[{unit_index}]");
                if !is_valid_name(unit.name.as_str()) {
                    return Err(topology_error(
                        format!("{unit_path}.name"),
                        format!(
                            "{:?} is not a valid name (1 to 64 of A-Z a-z 0-9 _ . -)",
                            unit.name.as_str()
                        ),
                    ));
                }
                if !units.insert(unit.name.clone()) {
                    return Err(topology_error(
                        format!("{unit_path}.name"),
                        format!(
                            "unit {} is defined twice; unit names are unique in the cluster",
                            unit.name
                        ),
                    ));
                }
                if !nodes.contains(&unit.node) {
                    return Err(topology_error(
                        format!("{unit_path}.node"),
                        format!("node {} is not a member", unit.node),
                    ));
                }
            }
            if service.shards.is_empty() {
                return Err(topology_error(
                    format!("{path}.shards"),
                    "a service needs at least one shard".into(),
                ));
            }
            for (shard_index, shard) in service.shards.iter().enumerate() {
                if !is_valid_name(shard.as_str()) {
                    return Err(topology_error(
                        format!("{path}.shards[{shard_index}]"),
                        format!(
                            "{:?} is not a valid name (1 to 64 of A-Z a-z 0-9 _ . -)",
                            shard.as_str()
                        ),
                    ));
                }
                if !shards.insert(shard.clone()) {
                    return Err(topology_error(
                        format!("{path}.shards[{shard_index}]"),
                        format!(
                            "shard {shard} is defined twice; shard names are unique in the cluster"
                        ),
                    ));
                }
            }
            let unit_count = service.units.len() as u32;
            match service.model {
                RedundancyModel::TwoN | RedundancyModel::NPlusM { .. } if unit_count < 2 => {
                    return Err(topology_error(
                        format!("{path}.units"),
                        format!(
                            "model {} needs at least 2 units (one for ACTIVE, one for STANDBY)",
                            service.model
                        ),
                    ));
                }
                RedundancyModel::NPlusM { active_units }
                    if active_units == 0 || active_units >= unit_count =>
                {
                    return Err(topology_error(
                        format!("{path}.active_units"),
                        format!(
                            "{active_units} is out of range for {unit_count} units (1 to {}: \
                             at least one unit must carry STANDBYs)",
                            unit_count - 1
                        ),
                    ));
                }
                RedundancyModel::NWayActive { actives_per_shard }
                    if actives_per_shard > unit_count =>
                {
                    return Err(topology_error(
                        format!("{path}.actives_per_shard"),
                        format!(
                            "{actives_per_shard} is more than the {unit_count} units (0 means all)"
                        ),
                    ));
                }
                _ => {}
            }
            let timeouts = &service.timeouts;
            for (key, value) in [
                ("instantiate_timeout_ms", timeouts.instantiate_ms),
                ("terminate_timeout_ms", timeouts.terminate_ms),
                ("cleanup_timeout_ms", timeouts.cleanup_ms),
                ("health_interval_ms", timeouts.health_interval_ms),
                ("health_timeout_ms", timeouts.health_timeout_ms),
                ("callback_timeout_ms", timeouts.callback_ms),
            ] {
                if value == 0 {
                    return Err(topology_error(
                        format!("{path}.{key}"),
                        "must be greater than 0".into(),
                    ));
                }
            }
            if service.escalation.window_ms == 0 {
                return Err(topology_error(
                    format!("{path}.escalation.window_ms"),
                    "must be greater than 0".into(),
                ));
            }
        }
        for node in self.node_ranks.keys() {
            if !nodes.contains(node) {
                return Err(topology_error(
                    "nodes".into(),
                    format!("a rank is given for node {node}, which is not a member"),
                ));
            }
        }
        Ok(())
    }

    /// The service called `name`.
    pub fn service(&self, name: &ServiceName) -> Option<&ServiceSpec> {
        self.services.iter().find(|service| &service.name == name)
    }

    /// The rank of `node` (0 when not given).
    pub fn node_rank(&self, node: NodeId) -> u32 {
        self.node_ranks.get(&node).copied().unwrap_or(0)
    }
}

impl ServiceSpec {
    /// A service of `model` whose units run `argv`, with every other setting at its default
    /// (no terminate or cleanup command, default timers and escalation, no per-unit limit, no
    /// colocation).
    pub fn new(
        name: impl Into<ServiceName>,
        model: RedundancyModel,
        units: Vec<UnitSpec>,
        shards: Vec<ShardName>,
        argv: Vec<String>,
    ) -> Self {
        Self {
            name: name.into(),
            model,
            units,
            shards,
            instantiate: ProcessSpec {
                argv,
                ..ProcessSpec::default()
            },
            terminate: None,
            cleanup: None,
            timeouts: UnitTimeouts::default(),
            escalation: EscalationPolicy::default(),
            max_shards_per_unit: 0,
            allow_colocation: false,
            checkpoint: CheckpointSpec::default(),
            ingress: BTreeMap::new(),
            vip_up: None,
            vip_down: None,
        }
    }

    /// The spec of unit `name`, if it belongs to this service.
    pub fn unit(&self, name: &UnitName) -> Option<&UnitSpec> {
        self.units.iter().find(|unit| &unit.name == name)
    }

    /// Position of `name` in config order (for tie-breaking), if it belongs to this service.
    pub fn unit_position(&self, name: &UnitName) -> Option<usize> {
        self.units.iter().position(|unit| &unit.name == name)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn service(
        name: &str,
        model: RedundancyModel,
        units: &[(&str, u64)],
        shards: &[&str],
    ) -> ServiceSpec {
        ServiceSpec::new(
            name,
            model,
            units
                .iter()
                .map(|(unit, node)| UnitSpec {
                    name: UnitName::from(*unit),
                    node: NodeId(*node),
                    rank: 0,
                })
                .collect(),
            shards.iter().map(|shard| ShardName::from(*shard)).collect(),
            vec!["/bin/true".into()],
        )
    }

    fn members() -> BTreeSet<NodeId> {
        [NodeId(1), NodeId(2), NodeId(3)].into()
    }

    #[test]
    fn a_good_topology_validates() {
        let topology = Topology {
            services: vec![
                service(
                    "counter",
                    RedundancyModel::TwoN,
                    &[("a", 1), ("b", 2)],
                    &["c0"],
                ),
                service(
                    "front",
                    RedundancyModel::NWayActive {
                        actives_per_shard: 0,
                    },
                    &[("f1", 1), ("f2", 2), ("f3", 3)],
                    &["f"],
                ),
            ],
            ..Topology::default()
        };
        topology.validate(&members()).unwrap();
    }

    #[test]
    fn bad_topologies_name_the_key() {
        let cases: Vec<(Topology, &str)> = vec![
            (
                Topology {
                    services: vec![service("s", RedundancyModel::TwoN, &[("a", 1)], &["x"])],
                    ..Topology::default()
                },
                "services[0].units",
            ),
            (
                Topology {
                    services: vec![service(
                        "s",
                        RedundancyModel::TwoN,
                        &[("a", 1), ("b", 9)],
                        &["x"],
                    )],
                    ..Topology::default()
                },
                "services[0].units[1].node",
            ),
            (
                Topology {
                    services: vec![
                        service("s", RedundancyModel::NoRedundancy, &[("a", 1)], &["x"]),
                        service("t", RedundancyModel::NoRedundancy, &[("a", 2)], &["y"]),
                    ],
                    ..Topology::default()
                },
                "services[1].units[0].name",
            ),
            (
                Topology {
                    services: vec![service(
                        "s",
                        RedundancyModel::NPlusM { active_units: 2 },
                        &[("a", 1), ("b", 2)],
                        &["x"],
                    )],
                    ..Topology::default()
                },
                "services[0].active_units",
            ),
            (
                Topology {
                    services: vec![service(
                        "s",
                        RedundancyModel::NoRedundancy,
                        &[("a", 1)],
                        &["x", "x"],
                    )],
                    ..Topology::default()
                },
                "services[0].shards[1]",
            ),
        ];
        for (topology, path) in cases {
            let error = topology.validate(&members()).unwrap_err();
            assert_eq!(error.path, path, "{error}");
        }
    }
}
