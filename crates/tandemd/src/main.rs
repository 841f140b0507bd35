//! `tandemd --config FILE --node NAME`: the tandem availability daemon.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;

/// The tandem availability daemon. Run one per node.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The cluster's TOML configuration file.
    #[arg(long, env = "TANDEM_CONFIG")]
    config: PathBuf,
    /// This node's name, as listed under [[nodes]] in the config.
    #[arg(long, env = "TANDEM_NODE")]
    node: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The event loop hands log lines to a writer thread (see `log_writer`); the guard lets it
    // write out the last ones before the process exits.
    let (writer, flush_on_exit) = match tandemd::log_writer::LogWriter::start() {
        Ok(started) => started,
        Err(error) => {
            eprintln!("tandemd: cannot start the log writer thread: {error}");
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,raft=warn")),
        )
        .with_writer(writer)
        // Colour codes only for a person at a terminal; log files stay greppable.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let outcome = run(args);
    if let Err(error) = &outcome {
        tracing::error!("{error:#}");
    }
    // The log's last lines first, then the one-line reason below them.
    drop(flush_on_exit);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tandemd: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// mimalloc rather than glibc's malloc: see the dependency's note in Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn run(args: Args) -> anyhow::Result<()> {
    let config = tandem_admin::config::Config::load(&args.config)?;
    // One thread: every message crosses from a socket task to the event loop and back, and
    // on one thread those hand-overs wake no other thread (a sync commit's round trip went
    // from 190 to 145 µs at the median with it). The disk's blocking work has threads of its
    // own (see `replicas` and the Raft log sync thread).
    let window = std::time::Duration::from_micros(config.cluster.idle_poll_us);
    let (runtime, polling) =
        tandem_io::idle_poll::runtime(window).context("start the tokio runtime")?;
    match polling {
        tandem_io::idle_poll::Polling::Off => {}
        tandem_io::idle_poll::Polling::On => tracing::info!(
            window_us = config.cluster.idle_poll_us,
            "idle polling on: the event loop polls this long for work before it sleeps"
        ),
        tandem_io::idle_poll::Polling::Unavailable(reason) => {
            tracing::warn!("idle polling off, though configured: {reason}")
        }
    }
    runtime.block_on(tandemd::runtime::run(config, &args.node, shutdown_signal()))
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = interrupt.recv() => tracing::info!("SIGINT received"),
    }
}
