//! `tandemctl`, the operator CLI of tandem. It talks to any daemon's admin endpoint.
//!
//! Modules: [`cli`] parses arguments and picks the cluster, [`cluster`] reaches it,
//! [`ops`] runs operations and reads the event log, [`render`] turns answers into tables and
//! JSON, [`dev`] runs a local cluster.

mod cli;
mod cluster;
mod dev;
mod ops;
mod render;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, DevCommand};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // --help and --version are "errors" that go to stdout and succeed.
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, `outer: inner: ...`. A cause whose text the line
/// already holds is left out: several errors (the admin client's, the config's) quote their
/// source in their own message, and saying it twice reads badly.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Status(args) => {
            let target = cli::target_from_environment(cli)?;
            let query = cluster::StatusQuery {
                shard: args.shard.clone(),
                service: args.service.clone(),
                summary: !args.all && !args.json,
            };
            let mut status = cluster::status_of(&target, cli.timeout(), &query)?;
            let filter = query.filter();
            if let Some(service) = &filter.service {
                if !status.services.iter().any(|known| known.name == *service) {
                    anyhow::bail!(
                        "there is no service {service:?} (services: {})",
                        status
                            .services
                            .iter()
                            .map(|known| known.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                status.services.retain(|known| known.name == *service);
            }
            let text = if args.json {
                if status.shards.is_empty() && !filter.is_empty() {
                    eprint!("{}", render::no_match(&status, &filter));
                }
                render::status_json(&status)
            } else {
                render::status_table(&status, &filter)
            };
            render::emit(&text)
        }
        Command::Switchover(args) => ops::switchover(&cli::target_from_environment(cli)?, args),
        Command::Lock(args) => ops::operation(&cli::target_from_environment(cli)?, "lock", args),
        Command::Unlock(args) => {
            ops::operation(&cli::target_from_environment(cli)?, "unlock", args)
        }
        Command::Shutdown(args) => {
            ops::operation(&cli::target_from_environment(cli)?, "shutdown", args)
        }
        Command::LockInstantiation(args) => ops::operation(
            &cli::target_from_environment(cli)?,
            "lock-instantiation",
            args,
        ),
        Command::UnlockInstantiation(args) => ops::operation(
            &cli::target_from_environment(cli)?,
            "unlock-instantiation",
            args,
        ),
        Command::Restart(args) => {
            ops::operation(&cli::target_from_environment(cli)?, "restart", args)
        }
        Command::Repair(args) => {
            ops::operation(&cli::target_from_environment(cli)?, "repair", args)
        }
        Command::Events(args) => {
            ops::events(&cli::target_from_environment(cli)?, args, cli.timeout())
        }
        Command::Restrict(args) => ops::restrict(&cli::target_from_environment(cli)?, args),
        Command::Send(args) => {
            let target = cli::target_from_environment(cli)?;
            let sent = cluster::ask(&target, "send", |addr| {
                tandem_admin::client::send(
                    addr,
                    cli.timeout(),
                    &args.service,
                    args.key.as_bytes(),
                    args.payload.as_bytes(),
                )
            })?;
            let seq = if sent.outcome == "appended" {
                format!(" at seq {}", sent.seq)
            } else {
                String::new()
            };
            render::say(&format!("{} for shard {}{seq}", sent.outcome, sent.shard));
            Ok(())
        }
        Command::Checkpoint(cli::CheckpointCommand::Verify(args)) => {
            ops::verify_checkpoint(&cli::target_from_environment(cli)?, args, cli.timeout())
        }
        Command::Dev(DevCommand::Up(args)) => dev::up(args),
        Command::Dev(DevCommand::Down(args)) => dev::down(args),
        Command::Dev(DevCommand::Traffic(args)) => dev::traffic(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn causes_quoted_by_their_parent_are_said_once() {
        let io = std::io::Error::other("connection refused");
        let error = tandem_admin::client::AdminClientError::Connect {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: io,
        };
        let error = Err::<(), _>(error).context("get status").unwrap_err();
        let line = one_line(&error);
        assert_eq!(line.matches("connection refused").count(), 1, "{line}");
        assert!(line.starts_with("get status: cannot reach"), "{line}");

        let error = Err::<(), _>(std::io::Error::other("disk on fire"))
            .context("write x")
            .unwrap_err();
        assert_eq!(one_line(&error), "write x: disk on fire");
    }
}
