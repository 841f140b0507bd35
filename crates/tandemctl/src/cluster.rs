//! Reaching a cluster: one endpoint, or each node of a config file in turn.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use tandem_admin::client::{self, AdminClientError};
use tandem_admin::config::Config;
use tandem_admin::status_view::{self, ShardFilter};
use tandem_proto::admin::{Status, StatusRequest};

use crate::cli::Target;

/// An admin endpoint to try, with the node name when a config file gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Node name, when known.
    pub name: Option<String>,
    /// Admin address.
    pub addr: SocketAddr,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{name} ({})", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// The endpoints of `target`, in the order to try them.
pub fn endpoints(target: &Target) -> anyhow::Result<Vec<Endpoint>> {
    match target {
        Target::Endpoint(addr) => Ok(vec![Endpoint {
            name: None,
            addr: *addr,
        }]),
        Target::Config(path) => {
            // The error already names the file, line and key.
            let config = Config::load(path)?;
            Ok(config
                .nodes
                .iter()
                .map(|node| Endpoint {
                    name: Some(node.name.clone()),
                    addr: node.admin_addr,
                })
                .collect())
        }
    }
}

/// Calls `ask` on each endpoint in order and returns the first answer. When every endpoint
/// fails, or one refuses the request on its merits (another would refuse it alike), returns
/// each tried one's error, in order.
pub fn first_answer<T>(
    endpoints: &[Endpoint],
    mut ask: impl FnMut(SocketAddr) -> Result<T, AdminClientError>,
) -> Result<T, Vec<(Endpoint, AdminClientError)>> {
    let mut failures = Vec::new();
    for endpoint in endpoints {
        match ask(endpoint.addr) {
            Ok(answer) => return Ok(answer),
            Err(error) => {
                let last = error.is_final();
                failures.push((endpoint.clone(), error));
                if last {
                    break;
                }
            }
        }
    }
    Err(failures)
}

/// Runs `ask` against `target`: the one endpoint's error as is, or, when a config's nodes all
/// fail, one stderr line per node and an error naming the config.
pub fn ask<T>(
    target: &Target,
    what: &str,
    ask: impl FnMut(SocketAddr) -> Result<T, AdminClientError>,
) -> anyhow::Result<T> {
    let endpoints = endpoints(target)?;
    match first_answer(&endpoints, ask) {
        Ok(answer) => Ok(answer),
        Err(mut failures) => match target {
            Target::Endpoint(_) => {
                let (_, error) = failures
                    .pop()
                    .context("no endpoint was tried (this is a bug)")?;
                Err(error).with_context(|| format!("get {what}"))
            }
            Target::Config(_) if failures.last().is_some_and(|(_, error)| error.is_final()) => {
                let (endpoint, error) = failures.pop().context("a final refusal")?;
                Err(error).with_context(|| format!("{what}: {endpoint}"))
            }
            Target::Config(path) => {
                for (endpoint, error) in &failures {
                    match error {
                        // The hint of a connect error goes once, on the last line.
                        AdminClientError::Connect { source, .. } => {
                            eprintln!("{endpoint}: cannot connect: {source}")
                        }
                        other => eprintln!("{endpoint}: {other}"),
                    }
                }
                bail!(
                    "get {what}: none of the {} nodes in {} answered (is the cluster running? \
                     `tandemctl dev up` starts a local one)",
                    failures.len(),
                    path.display()
                )
            }
        },
    }
}

/// Above this many matching shards, the `status` table is a summary.
pub const SUMMARY_ABOVE: u32 = 50;
/// A summary lists at most this many unhealthy shards.
pub const UNHEALTHY_LISTED_MAX: u32 = 100;

/// Which shards a status asks for, and whether it may be a summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusQuery {
    /// `--shard GLOB`.
    pub shard: Option<String>,
    /// `--service NAME`.
    pub service: Option<String>,
    /// A summary when more than [`SUMMARY_ABOVE`] shards match.
    pub summary: bool,
}

impl StatusQuery {
    /// The request to the leader.
    pub fn request(&self) -> StatusRequest {
        StatusRequest {
            shard_glob: self.shard.clone().unwrap_or_default(),
            service: self.service.clone().unwrap_or_default(),
            summarise_above: self.summary.then_some(SUMMARY_ABOVE),
            shards_max: if self.summary {
                UNHEALTHY_LISTED_MAX
            } else {
                0
            },
            data_only: false,
        }
    }

    /// The filter it applies.
    pub fn filter(&self) -> ShardFilter {
        ShardFilter::of(&self.request())
    }
}

/// The status `query` asks for from the first daemon of `target` that answers (it forwards
/// to the leader). Unless it is a summary, it carries the checkpoint replicas and
/// replication sessions of the listed shards from every node that answers (each node speaks
/// for its own; a node that does not answer is shown down by the status itself). A daemon
/// that does not know the filters answers with everything; it is narrowed here the same way.
pub fn status_of(
    target: &Target,
    timeout: Duration,
    query: &StatusQuery,
) -> anyhow::Result<Status> {
    let request = query.request();
    let mut status = ask(target, "status", |addr| {
        client::status_with(addr, timeout, request.clone(), false)
    })?;
    if !status_view::answers(&status, &request) {
        status_view::narrow(&mut status, &request);
    }
    if status
        .summary
        .as_ref()
        .is_some_and(|summary| summary.summarised)
    {
        return Ok(status);
    }
    let endpoints = endpoints(target)?;
    if endpoints.len() > 1 {
        status.replicas.clear();
        status.sessions.clear();
        let data_request = StatusRequest {
            data_only: true,
            ..request
        };
        for endpoint in &endpoints {
            if let Ok(local) =
                client::status_with(endpoint.addr, timeout, data_request.clone(), true)
            {
                status.replicas.extend(local.replicas);
                status.sessions.extend(local.sessions);
            }
        }
    }
    // A daemon that does not know `data_only` answered with all of its replicas.
    let listed: BTreeSet<&str> = status
        .shards
        .iter()
        .map(|shard| shard.name.as_str())
        .collect();
    let keep_replica = |shard: &str| listed.contains(shard);
    status
        .replicas
        .retain(|replica| keep_replica(&replica.shard));
    status
        .sessions
        .retain(|session| keep_replica(&session.shard));
    Ok(status)
}

/// The status without shards, from the first daemon that answers (it forwards to the
/// leader): its nodes and units, for finding the leader. Cheap for the daemon however many
/// shards there are: a summary listing one.
pub fn leader_view(target: &Target, timeout: Duration) -> anyhow::Result<Status> {
    let request = StatusRequest {
        summarise_above: Some(0),
        shards_max: 1,
        ..StatusRequest::default()
    };
    ask(target, "status", |addr| {
        client::status_with(addr, timeout, request.clone(), false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(name: &str, port: u16) -> Endpoint {
        Endpoint {
            name: Some(name.into()),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    #[test]
    fn first_answer_skips_failures_in_order() {
        let endpoints = [endpoint("n1", 1), endpoint("n2", 2), endpoint("n3", 3)];
        let mut tried = Vec::new();
        let answer = first_answer(&endpoints, |addr| {
            tried.push(addr.port());
            if addr.port() == 2 {
                Ok("n2 answered")
            } else {
                Err(AdminClientError::Closed { addr })
            }
        });
        assert_eq!(answer.unwrap(), "n2 answered");
        assert_eq!(tried, vec![1, 2]);
    }

    #[test]
    fn a_refusal_on_the_requests_merits_is_not_asked_of_the_next_node() {
        let endpoints = [endpoint("n1", 1), endpoint("n2", 2), endpoint("n3", 3)];
        let mut tried = Vec::new();
        let failures = first_answer::<()>(&endpoints, |addr| {
            tried.push(addr.port());
            Err(match addr.port() {
                1 => AdminClientError::Refused {
                    code: tandem_core::AdminCode::NoLeader,
                    message: "no leader yet".into(),
                },
                _ => AdminClientError::Refused {
                    code: tandem_core::AdminCode::NotFound,
                    message: "there is no service nosuch".into(),
                },
            })
        })
        .unwrap_err();
        assert_eq!(tried, vec![1, 2], "n3 is not asked");
        assert_eq!(failures.len(), 2);
    }

    #[test]
    fn first_answer_returns_every_failure() {
        let endpoints = [endpoint("n1", 1), endpoint("n2", 2)];
        let failures =
            first_answer::<()>(&endpoints, |addr| Err(AdminClientError::Closed { addr }))
                .unwrap_err();
        let names: Vec<String> = failures.iter().map(|(e, _)| e.to_string()).collect();
        assert_eq!(names, vec!["n1 (127.0.0.1:1)", "n2 (127.0.0.1:2)"]);
    }

    #[test]
    fn endpoints_of_a_config_are_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tandem.toml");
        std::fs::write(
            &path,
            "[cluster]\nname = \"t\"\ndata_dir = \"d\"\n\
             [[nodes]]\nname = \"b\"\npeer_addr = \"127.0.0.1:1\"\nadmin_addr = \"127.0.0.1:2\"\n\
             [[nodes]]\nname = \"a\"\npeer_addr = \"127.0.0.1:3\"\nadmin_addr = \"127.0.0.1:4\"\n",
        )
        .unwrap();
        let found = endpoints(&Target::Config(path)).unwrap();
        assert_eq!(found, vec![endpoint("b", 2), endpoint("a", 4)]);
    }

    #[test]
    fn missing_config_is_an_error_naming_it() {
        let error = endpoints(&Target::Config("/nonexistent/t.toml".into())).unwrap_err();
        assert!(error.to_string().contains("/nonexistent/t.toml"));
    }
}
