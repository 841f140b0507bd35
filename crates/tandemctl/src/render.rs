//! Turning answers into text: human tables and JSON for machines.

use std::io::Write;

use std::collections::BTreeMap;

use serde::Serialize;
use tandem_admin::status_view::{ShardFacts, ShardFilter};
use tandem_proto::admin::{
    EventRecord, NodeStatus, ReplicaInfo, SessionInfo, ShardStatus, Status, StatusSummary,
    TransferInfo, UnitRef, UnitRoles, UnitStatus,
};

/// Lays out rows as left-aligned columns separated by two spaces, without trailing spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|cell| cell.chars().count()).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            if index < widths.len() {
                widths[index] = widths[index].max(cell.chars().count());
            } else {
                widths.push(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|cell| cell.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (index, cell) in row.iter().enumerate() {
            if index > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = widths[index].saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The human view of `status` (narrowed by `filter`): a header line, a warning when the
/// figures are not the leader's, one row per node, then the shards (or, for a summary, the
/// counts and the unhealthy shards), the units, and the replication sessions and checkpoint
/// replicas of the shards listed.
pub fn status_table(status: &Status, filter: &ShardFilter) -> String {
    let leader = if status.leader.is_empty() {
        "none"
    } else {
        status.leader.as_str()
    };
    let mut out = format!(
        "cluster {}  leader {}  term {}  commit {}  applied {}  (answered by {})\n",
        status.cluster,
        leader,
        status.term,
        status.commit_index,
        status.applied_index,
        status.answered_by
    );
    if !status.from_leader {
        out.push_str(&format!(
            "no leader reachable: figures below are {}'s own view\n",
            status.answered_by
        ));
    }
    let header = [
        "NODE",
        "ID",
        "UP",
        "ROLE",
        "MEMBERSHIP",
        "TERM",
        "COMMIT",
        "APPLIED",
        "MATCH",
        "LAST HEARTBEAT",
        "PEER",
        "ADMIN",
    ];
    let rows: Vec<Vec<String>> = status
        .nodes
        .iter()
        .map(|node| {
            vec![
                node.name.clone(),
                node.id.to_string(),
                if node.up { "up" } else { "down" }.to_string(),
                if node.leader { "leader" } else { "follower" }.to_string(),
                node.membership.clone(),
                node.term.to_string(),
                node.commit_index.to_string(),
                node.applied_index.to_string(),
                node.match_index.to_string(),
                match node.heartbeat_age_ms {
                    Some(age) => format!("{age} ms ago"),
                    None => "-".to_string(),
                },
                node.peer_addr.clone(),
                node.admin_addr.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&header, &rows));
    let summarised = status.summary.as_ref().filter(|summary| summary.summarised);
    if let Some(summary) = summarised {
        out.push('\n');
        out.push_str(&summary_section(status, summary, filter));
    } else if !status.shards.is_empty() {
        out.push('\n');
        out.push_str(&shards_table(&status.shards, None));
    } else if !filter.is_empty() {
        out.push('\n');
        out.push_str(&no_match(status, filter));
    }
    if !status.units.is_empty() {
        out.push('\n');
        out.push_str(&units_table(&status.units, summarised));
    }
    if let Some(summary) = summarised {
        out.push_str(&format!(
            "\n(a summary, {} shards match: --all lists every one, with their checkpoint \
             replicas and replication sessions)\n",
            summary.shards
        ));
    }
    if !status.sessions.is_empty() {
        out.push('\n');
        out.push_str(&sessions_table(&status.sessions));
    }
    if !status.replicas.is_empty() {
        out.push('\n');
        out.push_str(&replicas_table(&status.replicas));
        out.push_str(&replica_versions_note(&status.replicas));
    }
    out
}

/// The line saying that `filter` matches no shard.
pub fn no_match(status: &Status, filter: &ShardFilter) -> String {
    let total = status
        .summary
        .as_ref()
        .map(|summary| summary.shards_total.to_string())
        .unwrap_or_else(|| "?".to_owned());
    format!(
        "no shard matches {} (the cluster has {total} shards)\n",
        filter.describe()
    )
}

/// The model of each service, by name.
fn models(status: &Status) -> BTreeMap<&str, &str> {
    status
        .services
        .iter()
        .map(|service| (service.name.as_str(), service.model.as_str()))
        .collect()
}

/// A summary's shard counts: a line, a row per service, and the unhealthy shards.
fn summary_section(status: &Status, summary: &StatusSummary, filter: &ShardFilter) -> String {
    let matching = if filter.is_empty() {
        format!("{} shards", summary.shards)
    } else {
        format!(
            "{} of {} shards match {}",
            summary.shards,
            summary.shards_total,
            filter.describe()
        )
    };
    let unhealthy = summary.shards - summary.healthy;
    let mut out = format!(
        "{matching}: {} healthy, {unhealthy} not (healthy: an ACTIVE, an in-sync STANDBY where \
         the model wants one, every role confirmed, no handover)\n",
        summary.healthy
    );
    let rows: Vec<Vec<String>> = summary
        .services
        .iter()
        .map(|service| {
            vec![
                service.name.clone(),
                service.model.clone(),
                service.shards.to_string(),
                service.healthy.to_string(),
                service.active.to_string(),
                if tandem_admin::status_view::wants_standby(&service.model) {
                    service.in_sync.to_string()
                } else {
                    "-".to_owned()
                },
                service.handover.to_string(),
                service.unconfirmed.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "SERVICE",
            "MODEL",
            "SHARDS",
            "HEALTHY",
            "ACTIVE",
            "ACTIVE+IN-SYNC STANDBY",
            "HANDOVER",
            "UNCONFIRMED",
        ],
        &rows,
    ));
    if unhealthy == 0 {
        out.push_str("\nevery shard is healthy\n");
        return out;
    }
    out.push_str(&format!("\nnot healthy ({unhealthy}):\n"));
    let models = models(status);
    out.push_str(&shards_table(&status.shards, Some(&models)));
    if summary.unlisted > 0 {
        out.push_str(&format!(
            "... and {} more not healthy: narrow with --shard GLOB or --service NAME, or list \
             every shard with --all\n",
            summary.unlisted
        ));
    }
    out
}

/// A line for each shard whose replicas' rows show different versions: each node answered
/// at its own moment, so under writes the rows (and digests) are not of one version; `checkpoint
/// verify` is what compares them at one.
fn replica_versions_note(replicas: &[ReplicaInfo]) -> String {
    let mut versions: std::collections::BTreeMap<&str, std::collections::BTreeSet<u64>> =
        Default::default();
    for replica in replicas {
        versions
            .entry(&replica.shard)
            .or_default()
            .insert(replica.version);
    }
    let mut out = String::new();
    for (shard, versions) in versions {
        if versions.len() > 1 {
            out.push_str(&format!(
                "({shard}: rows at different versions, each as its node answered a moment apart; \
                 `tandemctl checkpoint verify {shard}` compares digests at one version)\n"
            ));
        }
    }
    out
}

/// A byte count for people.
pub fn bytes(count: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if count < 1024 {
        return format!("{count} B");
    }
    let mut value = count as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// What a replication session is doing, in a word.
pub fn session_state(session: &SessionInfo) -> &'static str {
    if session.transfer.is_some() {
        "transferring"
    } else if session.verified {
        "in sync"
    } else if session.standby_version < session.primary_version {
        "catching up"
    } else {
        "verifying"
    }
}

/// Transfer progress: bytes and sections copied, rate, time left.
pub fn transfer_progress(transfer: &TransferInfo) -> String {
    let seconds = transfer.elapsed_us as f64 / 1e6;
    let rate = if seconds > 0.0 {
        transfer.bytes_sent as f64 / seconds
    } else {
        0.0
    };
    let left = transfer.bytes_total.saturating_sub(transfer.bytes_sent);
    let eta = if rate > 0.0 {
        format!("{:.1} s", left as f64 / rate)
    } else {
        "-".to_owned()
    };
    format!(
        "{} / {}, {}/{} sections, {}/s, ETA {eta}",
        bytes(transfer.bytes_sent),
        bytes(transfer.bytes_total),
        transfer.sections_sent,
        transfer.sections_total,
        bytes(rate as u64)
    )
}

/// One row per replication session (seen from each shard's primary).
fn sessions_table(sessions: &[SessionInfo]) -> String {
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|session| {
            vec![
                session.shard.clone(),
                session.standby.clone(),
                session.node.clone(),
                session_state(session).to_owned(),
                session
                    .primary_version
                    .saturating_sub(session.standby_version)
                    .to_string(),
                session.epoch.to_string(),
                session
                    .transfer
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), transfer_progress),
            ]
        })
        .collect();
    table(
        &[
            "SHARD",
            "STANDBY",
            "PRIMARY ON",
            "SYNC",
            "LAG (OPS)",
            "EPOCH",
            "TRANSFER",
        ],
        &rows,
    )
}

/// One row per checkpoint replica of every node that answered.
fn replicas_table(replicas: &[ReplicaInfo]) -> String {
    let rows: Vec<Vec<String>> = replicas
        .iter()
        .map(|replica| {
            vec![
                replica.shard.clone(),
                replica.unit.clone(),
                replica.node.clone(),
                if replica.complete {
                    replica.role.clone()
                } else {
                    format!("{} (incomplete)", replica.role)
                },
                replica.version.to_string(),
                replica.consumed.to_string(),
                replica.pending.to_string(),
                replica.sections.to_string(),
                bytes(replica.bytes),
                replica.digest.chars().take(16).collect(),
            ]
        })
        .collect();
    table(
        &[
            "REPLICA OF",
            "UNIT",
            "NODE",
            "ROLE",
            "VERSION",
            "CONSUMED",
            "PENDING",
            "SECTIONS",
            "BYTES",
            "DIGEST",
        ],
        &rows,
    )
}

/// `unit@node`, with `?` when the unit has not confirmed the role yet.
fn placed(unit: &str, node: &str, confirmed: bool) -> String {
    format!("{unit}@{node}{}", if confirmed { "" } else { "?" })
}

/// One row per shard: its ACTIVE(s), STANDBYs, epoch and handover; with the services'
/// `models`, also what is wrong with it.
fn shards_table(shards: &[ShardStatus], models: Option<&BTreeMap<&str, &str>>) -> String {
    let rows: Vec<Vec<String>> = shards
        .iter()
        .map(|shard| {
            let confirmed = |unit: &str| {
                shard
                    .roles
                    .iter()
                    .any(|role| role.unit == unit && role.confirmed)
            };
            let list = |role: &str| {
                let units: Vec<String> = shard
                    .roles
                    .iter()
                    .filter(|held| held.role == role)
                    .map(|held| placed(&held.unit, &held.node, held.confirmed))
                    .collect();
                if units.is_empty() {
                    "-".to_owned()
                } else {
                    units.join(" ")
                }
            };
            let active = match &shard.active {
                Some(UnitRef { unit, node }) => placed(unit, node, confirmed(unit)),
                None => list("ACTIVE"),
            };
            let mut other = Vec::new();
            for role in ["QUIESCING", "QUIESCED"] {
                let held = list(role);
                if held != "-" {
                    other.push(format!("{role} {held}"));
                }
            }
            if !shard.handover.is_empty() {
                other.push(format!("handover: {}", shard.handover));
            }
            if let Some(permille) = shard.admitted_permille {
                other.push(format!(
                    "restricted: admits {}.{}% of new sessions",
                    permille / 10,
                    permille % 10
                ));
            }
            let mut row = vec![
                shard.name.clone(),
                shard.service.clone(),
                active,
                list("STANDBY"),
                if shard.in_sync.is_empty() {
                    "-".to_owned()
                } else {
                    shard.in_sync.join(" ")
                },
                shard.epoch.to_string(),
            ];
            if let Some(models) = models {
                let model = models.get(shard.service.as_str()).copied().unwrap_or("");
                let problems: Vec<&str> = ShardFacts::of_status(shard, model)
                    .problems()
                    .into_iter()
                    .map(|problem| problem.text())
                    .collect();
                row.push(if problems.is_empty() {
                    "-".to_owned()
                } else {
                    problems.join(", ")
                });
            }
            row.push(if other.is_empty() {
                "-".to_owned()
            } else {
                other.join("; ")
            });
            row
        })
        .collect();
    let mut header = vec!["SHARD", "SERVICE", "ACTIVE", "STANDBY", "IN SYNC", "EPOCH"];
    if models.is_some() {
        header.push("PROBLEM");
    }
    header.push("NOTES");
    let mut out = table(&header, &rows);
    if shards
        .iter()
        .any(|shard| shard.roles.iter().any(|role| !role.confirmed))
    {
        out.push_str("(? = the unit has not confirmed this role yet)\n");
    }
    out
}

/// How many shards a unit holds each role for, in a few words.
fn roles_held(roles: &UnitRoles) -> String {
    let mut held = Vec::new();
    for (count, role) in [
        (roles.active, "ACTIVE"),
        (roles.standby, "STANDBY"),
        (roles.quiescing, "QUIESCING"),
    ] {
        if count > 0 {
            held.push(format!("{count} {role}"));
        }
    }
    if held.is_empty() {
        return "-".to_owned();
    }
    let mut text = held.join(", ");
    if roles.unconfirmed > 0 {
        text.push_str(&format!(" ({} unconfirmed)", roles.unconfirmed));
    }
    text
}

/// One row per unit: process, admin state, escalation; with a summary, the roles it holds.
fn units_table(units: &[UnitStatus], summary: Option<&StatusSummary>) -> String {
    let roles: BTreeMap<&str, &UnitRoles> = summary
        .iter()
        .flat_map(|summary| &summary.services)
        .flat_map(|service| &service.units)
        .map(|roles| (roles.unit.as_str(), roles))
        .collect();
    let rows: Vec<Vec<String>> = units
        .iter()
        .map(|unit| {
            let mut state = unit.state.clone();
            if !unit.enabled {
                state.push_str(" (disabled)");
            }
            if unit.restart_pending {
                state.push_str(" (restart pending)");
            }
            let mut row = vec![
                unit.name.clone(),
                unit.service.clone(),
                unit.node.clone(),
                state,
                if unit.pid == 0 {
                    "-".into()
                } else {
                    unit.pid.to_string()
                },
                unit.admin.clone(),
                unit.generation.to_string(),
                ladder(unit),
            ];
            if summary.is_some() {
                row.push(
                    roles
                        .get(unit.name.as_str())
                        .map_or_else(|| "-".to_owned(), |roles| roles_held(roles)),
                );
            }
            row.push(if unit.last_fault.is_empty() {
                "-".into()
            } else {
                unit.last_fault.clone()
            });
            row
        })
        .collect();
    let mut header = vec![
        "UNIT", "SERVICE", "NODE", "PROCESS", "PID", "ADMIN", "INSTANCE", "FAULTS",
    ];
    if summary.is_some() {
        header.push("ROLES");
    }
    header.push("LAST FAULT");
    table(&header, &rows)
}

/// `total (L1:2 L5:1)`: faults since the last repair, and the counters of the window.
fn ladder(unit: &UnitStatus) -> String {
    let levels: Vec<String> = unit
        .ladder_counts
        .iter()
        .enumerate()
        .filter(|(_, count)| **count > 0)
        .map(|(level, count)| format!("L{level}:{count}"))
        .collect();
    if levels.is_empty() {
        unit.faults_total.to_string()
    } else {
        format!("{} ({})", unit.faults_total, levels.join(" "))
    }
}

/// JSON shape of `status --json`. Field order is the output order.
#[derive(Debug, Serialize)]
struct StatusJson<'a> {
    cluster: &'a str,
    answered_by: &'a str,
    leader: Option<&'a str>,
    term: u64,
    commit_index: u64,
    applied_index: u64,
    from_leader: bool,
    nodes: Vec<NodeJson<'a>>,
    services: Vec<ServiceJson<'a>>,
    units: Vec<UnitJson<'a>>,
    shards: Vec<ShardJson<'a>>,
    replicas: Vec<ReplicaJson<'a>>,
    /// Counts over the matching shards; `None` when the daemon sent none.
    summary: Option<SummaryJson<'a>>,
}

/// JSON shape of the counts over the matching shards.
#[derive(Debug, Serialize)]
struct SummaryJson<'a> {
    shards_total: u64,
    shards: u64,
    healthy: u64,
    services: Vec<ServiceSummaryJson<'a>>,
}

/// JSON shape of one service's counts.
#[derive(Debug, Serialize)]
struct ServiceSummaryJson<'a> {
    name: &'a str,
    model: &'a str,
    shards: u64,
    healthy: u64,
    active: u64,
    in_sync: u64,
    handover: u64,
    unconfirmed: u64,
    units: Vec<UnitRolesJson<'a>>,
}

/// JSON shape of the roles one unit holds.
#[derive(Debug, Serialize)]
struct UnitRolesJson<'a> {
    unit: &'a str,
    active: u64,
    standby: u64,
    quiescing: u64,
    unconfirmed: u64,
}

impl<'a> From<&'a StatusSummary> for SummaryJson<'a> {
    fn from(summary: &'a StatusSummary) -> Self {
        Self {
            shards_total: summary.shards_total,
            shards: summary.shards,
            healthy: summary.healthy,
            services: summary
                .services
                .iter()
                .map(|service| ServiceSummaryJson {
                    name: &service.name,
                    model: &service.model,
                    shards: service.shards,
                    healthy: service.healthy,
                    active: service.active,
                    in_sync: service.in_sync,
                    handover: service.handover,
                    unconfirmed: service.unconfirmed,
                    units: service
                        .units
                        .iter()
                        .map(|roles| UnitRolesJson {
                            unit: &roles.unit,
                            active: roles.active,
                            standby: roles.standby,
                            quiescing: roles.quiescing,
                            unconfirmed: roles.unconfirmed,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// JSON shape of one checkpoint replica.
#[derive(Debug, Serialize)]
struct ReplicaJson<'a> {
    shard: &'a str,
    unit: &'a str,
    node: &'a str,
    role: &'a str,
    complete: bool,
    version: u64,
    consumed: u64,
    pending: u64,
    sections: u64,
    bytes: u64,
    file_bytes: u64,
    digest: &'a str,
}

/// JSON shape of one STANDBY's replication, as its primary sees it.
#[derive(Debug, Serialize)]
struct SyncJson<'a> {
    standby: &'a str,
    state: &'a str,
    lag_ops: u64,
    primary_version: u64,
    standby_version: u64,
    transfer: Option<TransferJson>,
}

/// JSON shape of a running state transfer.
#[derive(Debug, Serialize)]
struct TransferJson {
    bytes_sent: u64,
    bytes_total: u64,
    sections_sent: u64,
    sections_total: u64,
    elapsed_ms: u64,
    rate_bytes_per_s: u64,
    eta_ms: Option<u64>,
}

/// JSON shape of one service.
#[derive(Debug, Serialize)]
struct ServiceJson<'a> {
    name: &'a str,
    model: &'a str,
    units: &'a [String],
    shards: &'a [String],
}

/// JSON shape of one unit.
#[derive(Debug, Serialize)]
struct UnitJson<'a> {
    name: &'a str,
    service: &'a str,
    node: &'a str,
    pid: Option<u32>,
    state: &'a str,
    admin: &'a str,
    enabled: bool,
    generation: u64,
    restart_pending: bool,
    faults_total: u64,
    ladder_counts: &'a [u32],
    last_fault: Option<&'a str>,
    load: Option<u32>,
}

/// JSON shape of a unit's place.
#[derive(Debug, Serialize)]
struct PlaceJson<'a> {
    unit: &'a str,
    node: &'a str,
}

/// JSON shape of one role held.
#[derive(Debug, Serialize)]
struct RoleJson<'a> {
    unit: &'a str,
    node: &'a str,
    role: &'a str,
    confirmed: bool,
}

/// JSON shape of one shard.
#[derive(Debug, Serialize)]
struct ShardJson<'a> {
    name: &'a str,
    service: &'a str,
    active: Option<PlaceJson<'a>>,
    standbys: Vec<PlaceJson<'a>>,
    epoch: u64,
    version: u64,
    roles: Vec<RoleJson<'a>>,
    handover: Option<&'a str>,
    in_sync: &'a [String],
    sync: Vec<SyncJson<'a>>,
    admitted_permille: Option<u32>,
}

/// JSON shape of one node in `status --json`.
#[derive(Debug, Serialize)]
struct NodeJson<'a> {
    name: &'a str,
    id: u64,
    up: bool,
    leader: bool,
    membership: &'a str,
    peer_addr: &'a str,
    admin_addr: &'a str,
    term: u64,
    commit_index: u64,
    applied_index: u64,
    match_index: u64,
    heartbeat_age_ms: Option<u64>,
    admin: &'a str,
}

impl<'a> From<&'a NodeStatus> for NodeJson<'a> {
    fn from(node: &'a NodeStatus) -> Self {
        Self {
            name: &node.name,
            id: node.id,
            up: node.up,
            leader: node.leader,
            membership: &node.membership,
            peer_addr: &node.peer_addr,
            admin_addr: &node.admin_addr,
            term: node.term,
            commit_index: node.commit_index,
            applied_index: node.applied_index,
            match_index: node.match_index,
            heartbeat_age_ms: node.heartbeat_age_ms,
            admin: &node.admin,
        }
    }
}

/// The machine view of `status`: one pretty-printed JSON object, ending with a newline.
pub fn status_json(status: &Status) -> String {
    // Each shard's sessions, found once (a shard per session, not a scan per shard).
    let mut sessions: BTreeMap<&str, Vec<&SessionInfo>> = BTreeMap::new();
    for session in &status.sessions {
        sessions.entry(&session.shard).or_default().push(session);
    }
    let view = StatusJson {
        cluster: &status.cluster,
        answered_by: &status.answered_by,
        leader: Some(status.leader.as_str()).filter(|leader| !leader.is_empty()),
        term: status.term,
        commit_index: status.commit_index,
        applied_index: status.applied_index,
        from_leader: status.from_leader,
        nodes: status.nodes.iter().map(NodeJson::from).collect(),
        services: status
            .services
            .iter()
            .map(|service| ServiceJson {
                name: &service.name,
                model: &service.model,
                units: &service.units,
                shards: &service.shards,
            })
            .collect(),
        units: status
            .units
            .iter()
            .map(|unit| UnitJson {
                name: &unit.name,
                service: &unit.service,
                node: &unit.node,
                pid: Some(unit.pid).filter(|pid| *pid != 0),
                state: &unit.state,
                admin: &unit.admin,
                enabled: unit.enabled,
                generation: unit.generation,
                restart_pending: unit.restart_pending,
                faults_total: unit.faults_total,
                ladder_counts: &unit.ladder_counts,
                last_fault: Some(unit.last_fault.as_str()).filter(|fault| !fault.is_empty()),
                load: unit.load,
            })
            .collect(),
        shards: status
            .shards
            .iter()
            .map(|shard| ShardJson {
                name: &shard.name,
                service: &shard.service,
                active: shard.active.as_ref().map(|place| PlaceJson {
                    unit: &place.unit,
                    node: &place.node,
                }),
                standbys: shard
                    .standbys
                    .iter()
                    .map(|place| PlaceJson {
                        unit: &place.unit,
                        node: &place.node,
                    })
                    .collect(),
                epoch: shard.epoch,
                version: shard.version,
                roles: shard
                    .roles
                    .iter()
                    .map(|role| RoleJson {
                        unit: &role.unit,
                        node: &role.node,
                        role: &role.role,
                        confirmed: role.confirmed,
                    })
                    .collect(),
                handover: Some(shard.handover.as_str()).filter(|handover| !handover.is_empty()),
                in_sync: &shard.in_sync,
                admitted_permille: shard.admitted_permille,
                sync: sessions
                    .get(shard.name.as_str())
                    .into_iter()
                    .flatten()
                    .map(|session| SyncJson {
                        standby: &session.standby,
                        state: session_state(session),
                        lag_ops: session
                            .primary_version
                            .saturating_sub(session.standby_version),
                        primary_version: session.primary_version,
                        standby_version: session.standby_version,
                        transfer: session.transfer.as_ref().map(|transfer| {
                            let seconds = transfer.elapsed_us as f64 / 1e6;
                            let rate = if seconds > 0.0 {
                                transfer.bytes_sent as f64 / seconds
                            } else {
                                0.0
                            };
                            TransferJson {
                                bytes_sent: transfer.bytes_sent,
                                bytes_total: transfer.bytes_total,
                                sections_sent: transfer.sections_sent,
                                sections_total: transfer.sections_total,
                                elapsed_ms: transfer.elapsed_us / 1000,
                                rate_bytes_per_s: rate as u64,
                                eta_ms: (rate > 0.0).then(|| {
                                    (transfer.bytes_total.saturating_sub(transfer.bytes_sent)
                                        as f64
                                        / rate
                                        * 1000.0) as u64
                                }),
                            }
                        }),
                    })
                    .collect(),
            })
            .collect(),
        replicas: status
            .replicas
            .iter()
            .map(|replica| ReplicaJson {
                shard: &replica.shard,
                unit: &replica.unit,
                node: &replica.node,
                role: &replica.role,
                complete: replica.complete,
                version: replica.version,
                consumed: replica.consumed,
                pending: replica.pending,
                sections: replica.sections,
                bytes: replica.bytes,
                file_bytes: replica.file_bytes,
                digest: &replica.digest,
            })
            .collect(),
        summary: status.summary.as_ref().map(SummaryJson::from),
    };
    // Strings, integers, booleans and options always serialize; failing would be a bug here.
    let mut out = serde_json::to_string_pretty(&view).expect("status view serializes to JSON");
    out.push('\n');
    out
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for ms since the Unix epoch (UTC, proleptic Gregorian).
pub fn utc(unix_ms: u64) -> String {
    let seconds = unix_ms / 1000;
    let days = (seconds / 86_400) as i64;
    let time = seconds % 86_400;
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        time / 3600,
        time / 60 % 60,
        time % 60,
        unix_ms % 1000
    )
}

/// One event as a line of text.
pub fn event_line(event: &EventRecord) -> String {
    format!(
        "{} {} {:<14} {}\n",
        utc(event.time_unix_ms),
        event.node,
        event.kind,
        event.message
    )
}

/// JSON shape of one event.
#[derive(Debug, Serialize)]
struct EventJson<'a> {
    seq: u64,
    time_unix_ms: u64,
    time: String,
    node: &'a str,
    kind: &'a str,
    message: &'a str,
    index: Option<u64>,
}

/// One event as a line of JSON.
pub fn event_json(event: &EventRecord) -> String {
    let view = EventJson {
        seq: event.seq,
        time_unix_ms: event.time_unix_ms,
        time: utc(event.time_unix_ms),
        node: &event.node,
        kind: &event.kind,
        message: &event.message,
        index: Some(event.index).filter(|index| *index != 0),
    };
    let mut out = serde_json::to_string(&view).expect("event view serializes to JSON");
    out.push('\n');
    out
}

/// Writes one progress or report line to stdout. A failed write is ignored: losing a
/// progress line (say, to `| head`) must not abort a command half-way, as `println!` would
/// by panicking, leaving daemons started and unrecorded.
pub fn say(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
}

/// Writes `text` to stdout. A closed pipe (`tandemctl status | head -1`) is not an error:
/// the reader has what it wanted.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, id: u64, up: bool, leader: bool, age: Option<u64>) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            id,
            up,
            leader,
            peer_addr: format!("127.0.0.1:{}", 7100 + id),
            admin_addr: format!("127.0.0.1:{}", 7200 + id),
            membership: if id <= 2 { "voter" } else { "learner" }.into(),
            term: 3,
            commit_index: if up { 42 } else { 17 },
            applied_index: if up { 42 } else { 17 },
            match_index: if up { 42 } else { 17 },
            heartbeat_age_ms: age,
            admin: "unlocked".into(),
        }
    }

    fn sample(from_leader: bool) -> Status {
        Status {
            cluster: "demo".into(),
            answered_by: "n2".into(),
            leader: if from_leader {
                "n1".into()
            } else {
                String::new()
            },
            term: 3,
            commit_index: 42,
            applied_index: 42,
            nodes: vec![
                node("n1", 1, true, true, None),
                node("n2", 2, true, false, Some(12)),
                node("n3", 3, false, false, Some(1520)),
            ],
            from_leader,
            services: vec![],
            units: vec![],
            shards: vec![],
            replicas: vec![],
            sessions: vec![],
            summary: None,
        }
    }

    fn with_service(mut status: Status) -> Status {
        use tandem_proto::admin::{RoleStatus, ServiceStatus};
        status.services = vec![ServiceStatus {
            name: "counter".into(),
            model: "2n".into(),
            units: vec!["counter-a".into(), "counter-b".into()],
            shards: vec!["counter-0".into()],
        }];
        let unit = |name: &str, node: &str, pid: u32, faults: u64, counts: Vec<u32>, last: &str| {
            UnitStatus {
                name: name.into(),
                service: "counter".into(),
                node: node.into(),
                pid,
                state: "running".into(),
                admin: "unlocked".into(),
                enabled: true,
                generation: 1 + faults,
                restart_pending: false,
                faults_total: faults,
                ladder_counts: counts,
                last_fault: last.into(),
                load: None,
            }
        };
        status.units = vec![
            unit("counter-a", "n1", 4242, 0, vec![0; 6], ""),
            unit(
                "counter-b",
                "n2",
                4343,
                1,
                vec![0, 1, 0, 0, 0, 0],
                "process exited with code 1 -> L1 restart",
            ),
        ];
        status.shards = vec![ShardStatus {
            name: "counter-0".into(),
            service: "counter".into(),
            active: Some(UnitRef {
                unit: "counter-a".into(),
                node: "n1".into(),
            }),
            standbys: vec![UnitRef {
                unit: "counter-b".into(),
                node: "n2".into(),
            }],
            epoch: 3,
            version: 7,
            roles: vec![
                RoleStatus {
                    unit: "counter-a".into(),
                    node: "n1".into(),
                    role: "ACTIVE".into(),
                    confirmed: true,
                },
                RoleStatus {
                    unit: "counter-b".into(),
                    node: "n2".into(),
                    role: "STANDBY".into(),
                    confirmed: false,
                },
            ],
            handover: String::new(),
            in_sync: vec![],
            admitted_permille: None,
        }];
        status.sessions = vec![SessionInfo {
            node: "n1".into(),
            shard: "counter-0".into(),
            standby: "counter-b".into(),
            epoch: 3,
            primary_version: 120,
            standby_version: 20,
            verified: false,
            transfer: Some(TransferInfo {
                sections_total: 1000,
                sections_sent: 250,
                bytes_total: 4 * 1024 * 1024,
                bytes_sent: 1024 * 1024,
                elapsed_us: 500_000,
            }),
        }];
        status.replicas = vec![ReplicaInfo {
            node: "n1".into(),
            shard: "counter-0".into(),
            unit: "counter-a".into(),
            role: "primary".into(),
            version: 120,
            consumed: 7,
            digest: "00112233445566778899aabbccddeeff".into(),
            sections: 1000,
            complete: true,
            bytes: 4 * 1024 * 1024,
            pending: 1,
            file_bytes: 8 * 1024 * 1024,
        }];
        status
    }

    #[test]
    fn table_shows_shards_and_units() {
        let text = status_table(&with_service(sample(true)), &ShardFilter::default());
        let expected_tail = "\
SHARD      SERVICE  ACTIVE        STANDBY        IN SYNC  EPOCH  NOTES
counter-0  counter  counter-a@n1  counter-b@n2?  -        3      -
(? = the unit has not confirmed this role yet)

UNIT       SERVICE  NODE  PROCESS  PID   ADMIN     INSTANCE  FAULTS    LAST FAULT
counter-a  counter  n1    running  4242  unlocked  1         0         -
counter-b  counter  n2    running  4343  unlocked  2         1 (L1:1)  process exited with code 1 -> L1 restart

SHARD      STANDBY    PRIMARY ON  SYNC          LAG (OPS)  EPOCH  TRANSFER
counter-0  counter-b  n1          transferring  100        3      1.0 MiB / 4.0 MiB, 250/1000 sections, 2.0 MiB/s, ETA 1.5 s

REPLICA OF  UNIT       NODE  ROLE     VERSION  CONSUMED  PENDING  SECTIONS  BYTES    DIGEST
counter-0   counter-a  n1    primary  120      7         1        1000      4.0 MiB  0011223344556677
";
        assert!(text.ends_with(expected_tail), "{text}");
    }

    /// `with_service` with `count` shards, all healthy but `counter-7` (its STANDBY is not in
    /// sync) and `counter-8` (its STANDBY did not confirm).
    fn many(count: usize) -> Status {
        let mut status = with_service(sample(true));
        let template = status.shards[0].clone();
        status.shards = (0..count)
            .map(|index| {
                let mut shard = template.clone();
                shard.name = format!("counter-{index}");
                shard.roles[1].confirmed = index != 8;
                shard.in_sync = if index == 7 {
                    vec![]
                } else {
                    vec!["counter-b".into()]
                };
                shard
            })
            .collect();
        status.services[0].shards = status.shards.iter().map(|s| s.name.clone()).collect();
        status
    }

    fn summary_request(shards_max: u32) -> tandem_proto::admin::StatusRequest {
        tandem_proto::admin::StatusRequest {
            summarise_above: Some(50),
            shards_max,
            ..Default::default()
        }
    }

    #[test]
    fn many_shards_make_a_summary_listing_the_unhealthy_ones() {
        let mut status = many(60);
        tandem_admin::status_view::narrow(&mut status, &summary_request(1));
        let text = status_table(&status, &ShardFilter::default());
        let expected_tail = "\
60 shards: 58 healthy, 2 not (healthy: an ACTIVE, an in-sync STANDBY where the model wants one, every role confirmed, no handover)
SERVICE  MODEL  SHARDS  HEALTHY  ACTIVE  ACTIVE+IN-SYNC STANDBY  HANDOVER  UNCONFIRMED
counter  2n     60      58       60      58                      0         1

not healthy (2):
SHARD      SERVICE  ACTIVE        STANDBY       IN SYNC  EPOCH  PROBLEM             NOTES
counter-7  counter  counter-a@n1  counter-b@n2  -        3      no in-sync STANDBY  -
... and 1 more not healthy: narrow with --shard GLOB or --service NAME, or list every shard with --all

UNIT       SERVICE  NODE  PROCESS  PID   ADMIN     INSTANCE  FAULTS    ROLES                       LAST FAULT
counter-a  counter  n1    running  4242  unlocked  1         0         60 ACTIVE                   -
counter-b  counter  n2    running  4343  unlocked  2         1 (L1:1)  60 STANDBY (1 unconfirmed)  process exited with code 1 -> L1 restart

(a summary, 60 shards match: --all lists every one, with their checkpoint replicas and replication sessions)
";
        assert!(text.ends_with(expected_tail), "{text}");
        // No replica or session rows in a summary.
        assert!(!text.contains("REPLICA OF"), "{text}");
    }

    #[test]
    fn a_summary_of_healthy_shards_says_so() {
        let mut status = many(60);
        for shard in &mut status.shards {
            shard.roles[1].confirmed = true;
            shard.in_sync = vec!["counter-b".into()];
        }
        tandem_admin::status_view::narrow(&mut status, &summary_request(100));
        let text = status_table(&status, &ShardFilter::default());
        assert!(text.contains("60 shards: 60 healthy, 0 not"), "{text}");
        assert!(text.contains("\nevery shard is healthy\n"), "{text}");
        assert!(!text.contains("SHARD "), "{text}");
    }

    #[test]
    fn a_filter_narrows_the_table_and_says_when_nothing_matches() {
        let mut status = many(60);
        let request = tandem_proto::admin::StatusRequest {
            shard_glob: "counter-5?".into(),
            ..summary_request(100)
        };
        tandem_admin::status_view::narrow(&mut status, &request);
        let filter = ShardFilter::of(&request);
        let text = status_table(&status, &filter);
        // Ten shards: a table of each, no summary.
        assert!(text.contains("counter-50  counter"), "{text}");
        assert!(text.contains("counter-59  counter"), "{text}");
        assert!(!text.contains("counter-7 "), "{text}");
        assert!(!text.contains("a summary"), "{text}");

        let mut status = many(60);
        let request = tandem_proto::admin::StatusRequest {
            shard_glob: "nothing*".into(),
            service: "counter".into(),
            ..summary_request(100)
        };
        tandem_admin::status_view::narrow(&mut status, &request);
        let text = status_table(&status, &ShardFilter::of(&request));
        assert!(
            text.contains(
                "no shard matches --shard 'nothing*' --service counter (the cluster has 60 shards)\n"
            ),
            "{text}"
        );
        assert!(!text.contains("SHARD "), "{text}");
    }

    #[test]
    fn json_carries_the_summary_counts() {
        let mut status = many(60);
        tandem_admin::status_view::narrow(&mut status, &Default::default());
        let value: serde_json::Value = serde_json::from_str(&status_json(&status)).unwrap();
        assert_eq!(value["shards"].as_array().unwrap().len(), 60);
        let summary = &value["summary"];
        assert_eq!(summary["shards_total"], 60);
        assert_eq!(summary["healthy"], 58);
        assert_eq!(summary["services"][0]["in_sync"], 58);
        assert_eq!(summary["services"][0]["units"][1]["unit"], "counter-b");
        assert_eq!(summary["services"][0]["units"][1]["standby"], 60);
        assert_eq!(summary["services"][0]["units"][1]["unconfirmed"], 1);
    }

    #[test]
    fn replicas_at_different_versions_are_said_to_be_so() {
        let replica = |unit: &str, version: u64| ReplicaInfo {
            shard: "counter-0".into(),
            unit: unit.into(),
            version,
            ..ReplicaInfo::default()
        };
        assert_eq!(
            replica_versions_note(&[replica("counter-a", 7), replica("counter-b", 7)]),
            ""
        );
        let note = replica_versions_note(&[replica("counter-a", 7), replica("counter-b", 8)]);
        assert!(
            note.starts_with("(counter-0: rows at different versions"),
            "{note}"
        );
        assert!(
            note.contains("tandemctl checkpoint verify counter-0"),
            "{note}"
        );
    }

    #[test]
    fn json_carries_units_and_shards() {
        let value: serde_json::Value =
            serde_json::from_str(&status_json(&with_service(sample(true)))).unwrap();
        assert_eq!(value["services"][0]["model"], "2n");
        let unit = &value["units"][1];
        assert_eq!(unit["name"], "counter-b");
        assert_eq!(unit["service"], "counter");
        let shard = &value["shards"][0];
        assert_eq!(shard["in_sync"], serde_json::json!([]));
        let sync = &shard["sync"][0];
        assert_eq!(sync["standby"], "counter-b");
        assert_eq!(sync["state"], "transferring");
        assert_eq!(sync["lag_ops"], 100);
        assert_eq!(sync["transfer"]["bytes_sent"], 1024 * 1024);
        assert_eq!(sync["transfer"]["rate_bytes_per_s"], 2 * 1024 * 1024);
        assert_eq!(sync["transfer"]["eta_ms"], 1500);
        let replica = &value["replicas"][0];
        assert_eq!(replica["unit"], "counter-a");
        assert_eq!(replica["digest"], "00112233445566778899aabbccddeeff");
        assert_eq!(replica["version"], 120);
        assert_eq!(unit["node"], "n2");
        assert_eq!(unit["pid"], 4343);
        assert_eq!(unit["state"], "running");
        assert_eq!(unit["ladder_counts"][1], 1);
        let shard = &value["shards"][0];
        assert_eq!(shard["name"], "counter-0");
        assert_eq!(shard["service"], "counter");
        assert_eq!(
            shard["active"],
            serde_json::json!({"unit": "counter-a", "node": "n1"})
        );
        assert_eq!(
            shard["standbys"],
            serde_json::json!([{"unit": "counter-b", "node": "n2"}])
        );
        assert_eq!(shard["epoch"], 3);
        assert_eq!(shard["roles"][1]["confirmed"], false);
        assert!(shard["handover"].is_null());
    }

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(utc(1_795_461_296_789), "2026-11-23T19:14:56.789Z");
    }

    #[test]
    fn table_from_leader() {
        let expected = "\
cluster demo  leader n1  term 3  commit 42  applied 42  (answered by n2)
NODE  ID  UP    ROLE      MEMBERSHIP  TERM  COMMIT  APPLIED  MATCH  LAST HEARTBEAT  PEER            ADMIN
n1    1   up    leader    voter       3     42      42       42     -               127.0.0.1:7101  127.0.0.1:7201
n2    2   up    follower  voter       3     42      42       42     12 ms ago       127.0.0.1:7102  127.0.0.1:7202
n3    3   down  follower  learner     3     17      17       17     1520 ms ago     127.0.0.1:7103  127.0.0.1:7203
";
        assert_eq!(
            status_table(&sample(true), &ShardFilter::default()),
            expected
        );
    }

    #[test]
    fn table_without_leader_warns() {
        let text = status_table(&sample(false), &ShardFilter::default());
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("cluster demo  leader none  term 3  commit 42  applied 42  (answered by n2)")
        );
        assert_eq!(
            lines.next(),
            Some("no leader reachable: figures below are n2's own view")
        );
        assert!(lines.next().is_some_and(|line| line.starts_with("NODE")));
    }

    #[test]
    fn table_with_no_nodes_has_a_header_only() {
        let mut status = sample(true);
        status.nodes.clear();
        assert_eq!(
            status_table(&status, &ShardFilter::default())
                .lines()
                .count(),
            2
        );
    }

    #[test]
    fn json_has_the_documented_shape() {
        let value: serde_json::Value = serde_json::from_str(&status_json(&sample(true))).unwrap();
        let expected = serde_json::json!({
            "cluster": "demo",
            "answered_by": "n2",
            "leader": "n1",
            "term": 3,
            "commit_index": 42,
            "applied_index": 42,
            "from_leader": true,
            "nodes": [
                {"name": "n1", "id": 1, "up": true, "leader": true, "membership": "voter",
                 "peer_addr": "127.0.0.1:7101", "admin_addr": "127.0.0.1:7201", "term": 3,
                 "commit_index": 42, "applied_index": 42, "match_index": 42,
                 "heartbeat_age_ms": null, "admin": "unlocked"},
                {"name": "n2", "id": 2, "up": true, "leader": false, "membership": "voter",
                 "peer_addr": "127.0.0.1:7102", "admin_addr": "127.0.0.1:7202", "term": 3,
                 "commit_index": 42, "applied_index": 42, "match_index": 42,
                 "heartbeat_age_ms": 12, "admin": "unlocked"},
                {"name": "n3", "id": 3, "up": false, "leader": false, "membership": "learner",
                 "peer_addr": "127.0.0.1:7103", "admin_addr": "127.0.0.1:7203", "term": 3,
                 "commit_index": 17, "applied_index": 17, "match_index": 17,
                 "heartbeat_age_ms": 1520, "admin": "unlocked"},
            ],
            "services": [],
            "units": [],
            "shards": [],
            "replicas": [],
            "summary": null,
        });
        assert_eq!(value, expected);
    }

    #[test]
    fn json_leader_is_null_without_one() {
        let value: serde_json::Value = serde_json::from_str(&status_json(&sample(false))).unwrap();
        assert!(value["leader"].is_null());
        assert_eq!(value["from_leader"], serde_json::json!(false));
    }

    #[test]
    fn table_pads_ragged_rows() {
        let text = table(&["A", "LONGER"], &[vec!["xxxx".into(), "y".into()]]);
        assert_eq!(text, "A     LONGER\nxxxx  y\n");
    }
}
