//! Operations (switchover, lock, restart, ...) and the event log.

use std::time::Duration;

use anyhow::{bail, Context as _};
use tandem_admin::client::{self, AdminClientError, EventItem, EventStream};
use tandem_proto::admin::{admin_request, operation_request, switchover_request};

use crate::cli::{EventsArgs, OperationArgs, SwitchoverArgs, Target};
use crate::cluster::{self, Endpoint};
use crate::render::{self, say};

/// Sends an operation to the first node of `target` that can be reached (the daemon forwards
/// it to the leader). Only a failure to connect moves on to the next node: a refusal is the
/// cluster's answer, and an operation that timed out may have been carried out.
fn run_operation(
    target: &Target,
    what: &str,
    kind: admin_request::Kind,
    wait: Duration,
) -> anyhow::Result<()> {
    let endpoints = cluster::endpoints(target)?;
    let mut unreachable: Vec<(Endpoint, AdminClientError)> = Vec::new();
    for endpoint in &endpoints {
        match client::operation(endpoint.addr, kind.clone(), wait) {
            Ok(done) => {
                say(&format!(
                    "{} (by {}, index {})",
                    done.message, done.leader, done.index
                ));
                return Ok(());
            }
            Err(error @ AdminClientError::Connect { .. }) => {
                unreachable.push((endpoint.clone(), error))
            }
            Err(error) => return Err(error).with_context(|| what.to_owned()),
        }
    }
    for (endpoint, error) in &unreachable {
        eprintln!("{endpoint}: {error}");
    }
    bail!("{what}: no node of the cluster could be reached")
}

/// `tandemctl switchover`.
pub fn switchover(target: &Target, args: &SwitchoverArgs) -> anyhow::Result<()> {
    let (what, switchover_target) = match (&args.shard, &args.service, &args.node) {
        (Some(shard), _, _) => (
            format!("switchover of shard {shard}"),
            switchover_request::Target::Shard(shard.clone()),
        ),
        (_, Some(service), _) => (
            format!("switchover of service {service}"),
            switchover_request::Target::Service(service.clone()),
        ),
        (_, _, Some(node)) => (
            format!("switchover of node {node}"),
            switchover_request::Target::Node(node.clone()),
        ),
        _ => bail!("name a shard, --service or --node"),
    };
    run_operation(
        target,
        &what,
        client::switchover_kind(switchover_target),
        Duration::from_millis(args.wait_ms),
    )
}

/// `tandemctl restrict`.
pub fn restrict(target: &Target, args: &crate::cli::RestrictArgs) -> anyhow::Result<()> {
    let admitted_permille = match args.fraction.as_str() {
        "off" | "none" => None,
        text => {
            let fraction: f64 = text.parse().map_err(|_| {
                anyhow::anyhow!("{text:?} is not a fraction; give a number from 0 to 1, or `off`")
            })?;
            if !(0.0..=1.0).contains(&fraction) {
                bail!("{fraction} is not between 0 and 1 (0 admits no new session, 1 all)");
            }
            Some((fraction * 1000.0).round() as u32)
        }
    };
    run_operation(
        target,
        &format!("restrict shard {}", args.shard),
        admin_request::Kind::Restrict(tandem_proto::admin::RestrictRequest {
            shard: args.shard.clone(),
            admitted_permille,
        }),
        Duration::from_millis(args.wait_ms),
    )
}

/// `tandemctl lock|unlock|shutdown|lock-instantiation|unlock-instantiation|restart|repair`.
pub fn operation(target: &Target, op: &str, args: &OperationArgs) -> anyhow::Result<()> {
    let (what, operation_target) = match (&args.unit, &args.node) {
        (Some(unit), _) => (
            format!("{op} unit {unit}"),
            operation_request::Target::Unit(unit.clone()),
        ),
        (_, Some(node)) => (
            format!("{op} node {node}"),
            operation_request::Target::Node(node.clone()),
        ),
        _ => bail!("name a unit or --node"),
    };
    run_operation(
        target,
        &what,
        client::operation_kind(operation_target, op),
        Duration::from_millis(args.wait_ms),
    )
}

/// The leader's admin address, from the status of the first node that answers.
fn leader_addr(
    target: &Target,
    timeout: Duration,
) -> anyhow::Result<(String, std::net::SocketAddr)> {
    let status = cluster::leader_view(target, timeout)?;
    let leader = status
        .nodes
        .iter()
        .find(|node| node.leader)
        .with_context(|| "the cluster has no leader right now (is a majority of nodes up?)")?;
    let addr = leader.admin_addr.parse().with_context(|| {
        format!(
            "the leader's admin address {:?} is not IP:PORT",
            leader.admin_addr
        )
    })?;
    Ok((leader.name.clone(), addr))
}

/// `tandemctl events [--follow]`.
pub fn events(target: &Target, args: &EventsArgs, timeout: Duration) -> anyhow::Result<()> {
    let print = |record: &tandem_proto::admin::EventRecord| {
        let line = if args.json {
            render::event_json(record)
        } else {
            render::event_line(record)
        };
        render::emit(&line)
    };
    let (mut leader, addr) = leader_addr(target, timeout)?;
    let mut stream = EventStream::open(addr, 0, args.follow, timeout)
        .with_context(|| format!("read the event log of {leader}"))?;
    loop {
        match stream.next(Duration::from_secs(1)) {
            Ok(EventItem::Event(record)) => print(&record)?,
            Ok(EventItem::End(_)) => return Ok(()),
            Ok(EventItem::Idle) => {}
            Err(error) if args.follow => {
                // The leader went away or changed: follow the next one from now on.
                eprintln!("events: lost {leader} ({error}); finding the leader again...");
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                let (next, addr) = loop {
                    match leader_addr(target, timeout) {
                        Ok(found) => break found,
                        Err(error) if std::time::Instant::now() < deadline => {
                            eprintln!("events: {error:#}; retrying");
                            std::thread::sleep(Duration::from_millis(500));
                        }
                        Err(error) => return Err(error).context("follow events"),
                    }
                };
                stream = EventStream::open(addr, u64::MAX, true, timeout)
                    .with_context(|| format!("read the event log of {next}"))?;
                eprintln!("events: following {next} (events in between may be missing)");
                leader = next;
            }
            Err(error) => {
                return Err(error).with_context(|| format!("read the event log of {leader}"))
            }
        }
    }
}

/// `checkpoint verify`: compares the digests of the shard's ACTIVE and STANDBY replicas at one
/// version, asking every node for its own replicas until they agree on a version (bounded).
pub fn verify_checkpoint(
    target: &Target,
    args: &crate::cli::VerifyArgs,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_millis(args.wait_ms);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let query = cluster::StatusQuery {
            shard: Some(args.shard.clone()),
            ..cluster::StatusQuery::default()
        };
        let status = cluster::status_of(target, timeout, &query)?;
        let Some(shard) = status.shards.iter().find(|shard| shard.name == args.shard) else {
            bail!(
                "there is no shard {:?} (the cluster has {} shards; `tandemctl status` lists them)",
                args.shard,
                status
                    .summary
                    .as_ref()
                    .map_or(0, |summary| summary.shards_total)
            );
        };
        let Some(active) = &shard.active else {
            bail!(
                "shard {} has no ACTIVE (or is n-way-active); nothing to compare against",
                shard.name
            );
        };
        let holders: Vec<&str> = std::iter::once(active.unit.as_str())
            .chain(shard.standbys.iter().map(|standby| standby.unit.as_str()))
            .collect();
        let replicas: Vec<_> = holders
            .iter()
            .map(|unit| {
                status
                    .replicas
                    .iter()
                    .find(|replica| replica.shard == shard.name && replica.unit == *unit)
                    .map(|replica| (*unit, replica))
            })
            .collect();
        let found: Vec<_> = replicas.iter().flatten().collect();
        let missing: Vec<&str> = holders
            .iter()
            .zip(&replicas)
            .filter(|(_, replica)| replica.is_none())
            .map(|(unit, _)| *unit)
            .collect();
        let same_version = missing.is_empty()
            && found.iter().all(|(_, replica)| replica.complete)
            && found
                .windows(2)
                .all(|pair| pair[0].1.version == pair[1].1.version);
        if same_version {
            let reference = &found[0].1;
            let mismatched: Vec<_> = found
                .iter()
                .filter(|(_, replica)| replica.digest != reference.digest)
                .collect();
            if args.json {
                let replicas: Vec<serde_json::Value> = found
                    .iter()
                    .map(|(unit, replica)| {
                        serde_json::json!({
                            "unit": unit,
                            "node": replica.node,
                            "role": replica.role,
                            "version": replica.version,
                            "digest": replica.digest,
                            "sections": replica.sections,
                        })
                    })
                    .collect();
                let answer = serde_json::json!({
                    "shard": shard.name,
                    "version": reference.version,
                    "match": mismatched.is_empty(),
                    "replicas": replicas,
                });
                println!("{answer}");
            } else {
                for (unit, replica) in &found {
                    say(&format!(
                        "{unit}@{} ({}): version {} digest {} ({} sections)",
                        replica.node,
                        replica.role,
                        replica.version,
                        replica.digest,
                        replica.sections
                    ));
                }
            }
            if mismatched.is_empty() {
                if !args.json {
                    say(&format!(
                        "shard {}: {} replicas match at version {}",
                        shard.name,
                        found.len(),
                        reference.version
                    ));
                }
                return Ok(());
            }
            bail!(
                "shard {}: digest mismatch at version {}: {}",
                shard.name,
                reference.version,
                mismatched
                    .iter()
                    .map(|(unit, replica)| format!("{unit} has {}", replica.digest))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if std::time::Instant::now() >= deadline {
            for (unit, replica) in &found {
                eprintln!(
                    "{unit}@{} ({}): version {}{} digest {}",
                    replica.node,
                    replica.role,
                    replica.version,
                    if replica.complete {
                        ""
                    } else {
                        " (incomplete)"
                    },
                    replica.digest
                );
            }
            for unit in &missing {
                eprintln!(
                    "{unit}: no replica reported (its node did not answer, or it holds none yet)"
                );
            }
            eprintln!(
                "shard {}: the replicas were never seen at one version in {} ms ({attempts} tries); \
                 a STANDBY may be catching up (see `tandemctl status`)",
                shard.name, args.wait_ms
            );
            std::process::exit(2);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
