//! `[[services]]`: the services, their units and shards, and how units are run.
//!
//! ```toml
//! [[services]]
//! name = "counter"
//! model = "2n"                         # 2n | n+m | n-way-active | none
//! shards = ["counter-0"]
//! units = [{ name = "counter-a", node = "n1" }, { name = "counter-b", node = "n2" }]
//! instantiate = ["target/release/examples/counter"]
//! health_interval_ms = 100
//! health_timeout_ms = 300
//! checkpoint_mode = "sync"             # sync | async: what a commit waits for by default
//! async_lag_max_ops = 10000            # an async commit waits while a STANDBY lags more
//! vip_up = ["/usr/local/bin/vip", "up"]      # optional, run where a shard's ingress arrives
//! vip_down = ["/usr/local/bin/vip", "down"]  # optional, run where it leaves
//!
//! [services.ingress.counter-0]         # the addresses that follow the shard's ACTIVE
//! udp = "127.0.0.1:5060"
//! tcp = "127.0.0.1:5060"                # optional: u32 big-endian length-prefixed frames
//! ```
//!
//! A relative program path with a `/` in it is resolved against the config file's directory
//! when the unit starts; a bare name is looked up in `PATH`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use serde::{Deserialize, Serialize};
use tandem_core::{
    CheckpointSpec, EscalationPolicy, IngressSpec, NodeId, ProcessSpec, RedundancyModel,
    ServiceName, ServiceSpec, ShardName, Topology, UnitName, UnitSpec, UnitTimeouts,
};
use toml::Spanned;

use super::{Checker, ConfigError, NodeConfig};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    name: Spanned<String>,
    model: Spanned<String>,
    active_units: Option<Spanned<u32>>,
    actives_per_shard: Option<Spanned<u32>>,
    shards: Spanned<Vec<String>>,
    units: Spanned<Vec<Spanned<RawUnit>>>,
    instantiate: Spanned<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    working_dir: Option<String>,
    terminate: Option<Spanned<Vec<String>>>,
    cleanup: Option<Spanned<Vec<String>>>,
    instantiate_timeout_ms: Option<Spanned<u64>>,
    terminate_timeout_ms: Option<Spanned<u64>>,
    cleanup_timeout_ms: Option<Spanned<u64>>,
    health_interval_ms: Option<Spanned<u64>>,
    health_timeout_ms: Option<Spanned<u64>>,
    callback_timeout_ms: Option<Spanned<u64>>,
    max_shards_per_unit: Option<u32>,
    allow_colocation: Option<bool>,
    escalation: Option<Spanned<RawEscalation>>,
    checkpoint_mode: Option<Spanned<String>>,
    async_lag_max_ops: Option<Spanned<u64>>,
    #[serde(default)]
    ingress: BTreeMap<String, Spanned<RawIngress>>,
    vip_up: Option<Spanned<Vec<String>>>,
    vip_down: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIngress {
    #[serde(skip_serializing_if = "Option::is_none")]
    udp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnit {
    name: String,
    node: String,
    rank: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEscalation {
    reset_max: Option<u32>,
    restart_max: Option<u32>,
    reinitialise_max: Option<u32>,
    node_restart_max: Option<u32>,
    window_ms: Option<u64>,
    relocate: Option<bool>,
}

/// Where each service and unit sits in the file, to point errors at lines.
#[derive(Default)]
pub(super) struct Spans {
    services: Vec<Range<usize>>,
    units: BTreeMap<(usize, usize), Range<usize>>,
}

impl Spans {
    /// The best span for a key path like `services[1].units[0].node`.
    pub(super) fn for_path(&self, path: &str) -> Option<Range<usize>> {
        let index = |text: &str, prefix: &str| -> Option<(usize, usize)> {
            let rest = text.strip_prefix(prefix)?;
            let end = rest.find(']')?;
            Some((rest[..end].parse().ok()?, prefix.len() + end + 1))
        };
        let (service, consumed) = index(path, "services[")?;
        if let Some((unit, _)) = index(&path[consumed..], ".units[") {
            if let Some(span) = self.units.get(&(service, unit)) {
                return Some(span.clone());
            }
        }
        self.services.get(service).cloned()
    }
}

fn model_from(
    checker: &Checker<'_>,
    index: usize,
    raw: &RawService,
) -> Result<RedundancyModel, ConfigError> {
    let key = |name: &str| format!("services[{index}].{name}");
    let unit_count = raw.units.get_ref().len() as u32;
    let model = match raw.model.get_ref().as_str() {
        "2n" => RedundancyModel::TwoN,
        "n+m" => RedundancyModel::NPlusM {
            active_units: raw
                .active_units
                .as_ref()
                .map_or(unit_count.saturating_sub(1), |value| *value.get_ref()),
        },
        "n-way-active" => RedundancyModel::NWayActive {
            actives_per_shard: raw.actives_per_shard.as_ref().map_or(0, |value| *value.get_ref()),
        },
        "none" => RedundancyModel::NoRedundancy,
        other => {
            return Err(checker.invalid(
                Some(raw.model.span()),
                key("model"),
                format!("{other:?} is not a redundancy model (use \"2n\", \"n+m\", \"n-way-active\" or \"none\")"),
            ))
        }
    };
    let misplaced = [
        ("active_units", &raw.active_units, "n+m"),
        ("actives_per_shard", &raw.actives_per_shard, "n-way-active"),
    ];
    for (name, value, wanted) in misplaced {
        if let Some(value) = value {
            if model.name() != wanted {
                return Err(checker.invalid(
                    Some(value.span()),
                    key(name),
                    format!(
                        "only applies to model \"{wanted}\", not \"{}\"",
                        model.name()
                    ),
                ));
            }
        }
    }
    Ok(model)
}

fn process(
    argv: &[String],
    env: BTreeMap<String, String>,
    working_dir: Option<String>,
) -> ProcessSpec {
    ProcessSpec {
        argv: argv.to_vec(),
        env,
        working_dir,
    }
}

/// Turns the raw services into a topology, checked against the nodes.
pub(super) fn parse_services(
    checker: &Checker<'_>,
    raw: Vec<Spanned<RawService>>,
    nodes: &[NodeConfig],
    node_restart: Option<ProcessSpec>,
) -> Result<Topology, ConfigError> {
    let mut spans = Spans::default();
    let mut services = Vec::with_capacity(raw.len());
    for (index, raw_service) in raw.into_iter().enumerate() {
        spans.services.push(raw_service.span());
        let raw = raw_service.into_inner();
        let model = model_from(checker, index, &raw)?;
        let mut units = Vec::new();
        for (unit_index, raw_unit) in raw.units.get_ref().iter().enumerate() {
            spans.units.insert((index, unit_index), raw_unit.span());
            let unit = raw_unit.get_ref();
            let node = nodes
                .iter()
                .find(|node| node.name == unit.node)
                .ok_or_else(|| {
                    checker.invalid(
                        Some(raw_unit.span()),
                        format!("services[{index}].units[{unit_index}].node"),
                        format!(
                            "{:?} is not a node of this config (nodes: {})",
                            unit.node,
                            nodes
                                .iter()
                                .map(|node| node.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })?;
            units.push(UnitSpec {
                name: UnitName(unit.name.clone()),
                node: NodeId(node.id),
                rank: unit.rank.unwrap_or(0),
            });
        }
        let defaults = UnitTimeouts::default();
        let timer = |value: &Option<Spanned<u64>>, default: u64| {
            value.as_ref().map_or(default, |v| *v.get_ref())
        };
        let timeouts = UnitTimeouts {
            instantiate_ms: timer(&raw.instantiate_timeout_ms, defaults.instantiate_ms),
            terminate_ms: timer(&raw.terminate_timeout_ms, defaults.terminate_ms),
            cleanup_ms: timer(&raw.cleanup_timeout_ms, defaults.cleanup_ms),
            health_interval_ms: timer(&raw.health_interval_ms, defaults.health_interval_ms),
            health_timeout_ms: timer(&raw.health_timeout_ms, defaults.health_timeout_ms),
            callback_ms: timer(&raw.callback_timeout_ms, defaults.callback_ms),
        };
        let escalation = match &raw.escalation {
            None => EscalationPolicy::default(),
            Some(raw) => {
                let defaults = EscalationPolicy::default();
                let raw = raw.get_ref();
                EscalationPolicy {
                    reset_max: raw.reset_max.unwrap_or(defaults.reset_max),
                    restart_max: raw.restart_max.unwrap_or(defaults.restart_max),
                    reinitialise_max: raw.reinitialise_max.unwrap_or(defaults.reinitialise_max),
                    node_restart_max: raw.node_restart_max.unwrap_or(defaults.node_restart_max),
                    window_ms: raw.window_ms.unwrap_or(defaults.window_ms),
                    relocate: raw.relocate.unwrap_or(defaults.relocate),
                }
            }
        };
        let checkpoint = {
            let defaults = CheckpointSpec::default();
            let sync = match &raw.checkpoint_mode {
                None => defaults.sync,
                Some(mode) => match mode.get_ref().as_str() {
                    "sync" => true,
                    "async" => false,
                    other => {
                        return Err(checker.invalid(
                            Some(mode.span()),
                            format!("services[{index}].checkpoint_mode"),
                            format!(
                                "{other:?} is not a checkpoint mode (use \"sync\" or \"async\")"
                            ),
                        ))
                    }
                },
            };
            let async_lag_max_ops = match &raw.async_lag_max_ops {
                None => defaults.async_lag_max_ops,
                Some(value) if *value.get_ref() == 0 => {
                    return Err(checker.invalid(
                        Some(value.span()),
                        format!("services[{index}].async_lag_max_ops"),
                        "must be at least 1 (use checkpoint_mode = \"sync\" for no lag)".into(),
                    ))
                }
                Some(value) => *value.get_ref(),
            };
            CheckpointSpec {
                sync,
                async_lag_max_ops,
            }
        };
        let mut ingress = BTreeMap::new();
        for (shard, raw_ingress) in &raw.ingress {
            let key = format!("services[{index}].ingress.{shard}");
            if !raw.shards.get_ref().contains(shard) {
                return Err(checker.invalid(
                    Some(raw_ingress.span()),
                    key,
                    format!("{shard:?} is not a shard of this service"),
                ));
            }
            let spec = raw_ingress.get_ref();
            for (name, address) in [("udp", &spec.udp), ("tcp", &spec.tcp)] {
                if let Some(address) = address {
                    if address.parse::<std::net::SocketAddr>().is_err() {
                        return Err(checker.invalid(
                            Some(raw_ingress.span()),
                            format!("{key}.{name}"),
                            format!("{address:?} is not an ip:port address"),
                        ));
                    }
                }
            }
            if spec.udp.is_none() {
                return Err(checker.invalid(
                    Some(raw_ingress.span()),
                    key,
                    "gives no udp address (a tcp address comes with a udp one)".into(),
                ));
            }
            ingress.insert(
                ShardName(shard.clone()),
                IngressSpec {
                    udp: spec.udp.clone(),
                    tcp: spec.tcp.clone(),
                },
            );
        }
        services.push(ServiceSpec {
            checkpoint,
            ingress,
            vip_up: raw
                .vip_up
                .as_ref()
                .map(|argv| process(argv.get_ref(), raw.env.clone(), raw.working_dir.clone())),
            vip_down: raw
                .vip_down
                .as_ref()
                .map(|argv| process(argv.get_ref(), raw.env.clone(), raw.working_dir.clone())),
            name: ServiceName(raw.name.get_ref().clone()),
            model,
            units,
            shards: raw
                .shards
                .get_ref()
                .iter()
                .cloned()
                .map(ShardName)
                .collect(),
            instantiate: process(
                raw.instantiate.get_ref(),
                raw.env.clone(),
                raw.working_dir.clone(),
            ),
            terminate: raw
                .terminate
                .as_ref()
                .map(|argv| process(argv.get_ref(), raw.env.clone(), raw.working_dir.clone())),
            cleanup: raw
                .cleanup
                .as_ref()
                .map(|argv| process(argv.get_ref(), raw.env.clone(), raw.working_dir.clone())),
            timeouts,
            escalation,
            max_shards_per_unit: raw.max_shards_per_unit.unwrap_or(0),
            allow_colocation: raw.allow_colocation.unwrap_or(false),
        });
    }
    let topology = Topology {
        services,
        node_ranks: nodes
            .iter()
            .filter(|node| node.rank != 0)
            .map(|node| (NodeId(node.id), node.rank))
            .collect(),
        node_restart,
    };
    let members: BTreeSet<NodeId> = nodes.iter().map(|node| NodeId(node.id)).collect();
    topology.validate(&members).map_err(|error| {
        checker.invalid(
            spans.for_path(&error.path),
            error.path.clone(),
            error.message,
        )
    })?;
    Ok(topology)
}

// Output shape for `to_toml`.

#[derive(Serialize)]
pub(super) struct OutService {
    name: String,
    model: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    active_units: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actives_per_shard: Option<u32>,
    shards: Vec<String>,
    units: Vec<OutUnit>,
    instantiate: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    env: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    working_dir: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    terminate: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cleanup: Option<Vec<String>>,
    instantiate_timeout_ms: u64,
    terminate_timeout_ms: u64,
    cleanup_timeout_ms: u64,
    health_interval_ms: u64,
    health_timeout_ms: u64,
    callback_timeout_ms: u64,
    max_shards_per_unit: u32,
    allow_colocation: bool,
    escalation: OutEscalation,
    checkpoint_mode: &'static str,
    async_lag_max_ops: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    vip_up: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vip_down: Option<Vec<String>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    ingress: BTreeMap<String, RawIngress>,
}

#[derive(Serialize)]
struct OutUnit {
    name: String,
    node: String,
    rank: u32,
}

#[derive(Serialize)]
struct OutEscalation {
    reset_max: u32,
    restart_max: u32,
    reinitialise_max: u32,
    node_restart_max: u32,
    window_ms: u64,
    relocate: bool,
}

/// The services of `topology` in the file's shape (node ids back to names).
pub(super) fn out_services(topology: &Topology, nodes: &[NodeConfig]) -> Vec<OutService> {
    let node_name = |id: NodeId| {
        nodes
            .iter()
            .find(|node| node.id == id.0)
            .map_or_else(|| id.to_string(), |node| node.name.clone())
    };
    topology
        .services
        .iter()
        .map(|service| {
            let (active_units, actives_per_shard) = match service.model {
                RedundancyModel::NPlusM { active_units } => (Some(active_units), None),
                RedundancyModel::NWayActive { actives_per_shard } => {
                    (None, Some(actives_per_shard))
                }
                _ => (None, None),
            };
            let timeouts = &service.timeouts;
            let escalation = &service.escalation;
            OutService {
                name: service.name.0.clone(),
                model: service.model.name().to_owned(),
                active_units,
                actives_per_shard,
                shards: service.shards.iter().map(|shard| shard.0.clone()).collect(),
                units: service
                    .units
                    .iter()
                    .map(|unit| OutUnit {
                        name: unit.name.0.clone(),
                        node: node_name(unit.node),
                        rank: unit.rank,
                    })
                    .collect(),
                instantiate: service.instantiate.argv.clone(),
                env: service.instantiate.env.clone(),
                working_dir: service.instantiate.working_dir.clone(),
                terminate: service.terminate.as_ref().map(|spec| spec.argv.clone()),
                cleanup: service.cleanup.as_ref().map(|spec| spec.argv.clone()),
                instantiate_timeout_ms: timeouts.instantiate_ms,
                terminate_timeout_ms: timeouts.terminate_ms,
                cleanup_timeout_ms: timeouts.cleanup_ms,
                health_interval_ms: timeouts.health_interval_ms,
                health_timeout_ms: timeouts.health_timeout_ms,
                callback_timeout_ms: timeouts.callback_ms,
                max_shards_per_unit: service.max_shards_per_unit,
                allow_colocation: service.allow_colocation,
                escalation: OutEscalation {
                    reset_max: escalation.reset_max,
                    restart_max: escalation.restart_max,
                    reinitialise_max: escalation.reinitialise_max,
                    node_restart_max: escalation.node_restart_max,
                    window_ms: escalation.window_ms,
                    relocate: escalation.relocate,
                },
                checkpoint_mode: if service.checkpoint.sync {
                    "sync"
                } else {
                    "async"
                },
                async_lag_max_ops: service.checkpoint.async_lag_max_ops,
                vip_up: service.vip_up.as_ref().map(|spec| spec.argv.clone()),
                vip_down: service.vip_down.as_ref().map(|spec| spec.argv.clone()),
                ingress: service
                    .ingress
                    .iter()
                    .map(|(shard, ingress)| {
                        (
                            shard.0.clone(),
                            RawIngress {
                                udp: ingress.udp.clone(),
                                tcp: ingress.tcp.clone(),
                            },
                        )
                    })
                    .collect(),
            }
        })
        .collect()
}
