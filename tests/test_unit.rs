//! `tandem-test-unit`: the unit the end-to-end tests and the benchmark run. It records every
//! hook with a CLOCK_MONOTONIC timestamp (shared by every process of the machine) in the file
//! named by `TANDEM_TEST_RECORD`, one line per event:
//!
//! `<monotonic ns> <unit> <generation> <pid> <event> <shard> <role> <epoch>`
//!
//! where event is `start` (a hook begins) or `done` (it returned), and role is the role asked
//! for (`QUIESCED` for quiesce, `NONE` for remove). With `TANDEM_TEST_CHILD=1` it also starts a
//! `sleep` child in its process group, to show that no descendant outlives its unit.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;

use tandem::{monotonic_ns, Context, HookError, Role, ShardName, Unit};

struct Recorder {
    path: PathBuf,
}

impl Recorder {
    /// Appends one line with a single write, so lines of several processes never interleave.
    fn record(
        &self,
        ctx: &Context,
        event: &str,
        shard: &ShardName,
        role: &str,
        epoch: u64,
    ) -> Result<(), HookError> {
        let line = format!(
            "{} {} {} {} {event} {shard} {role} {epoch}\n",
            monotonic_ns(),
            ctx.unit(),
            ctx.generation(),
            std::process::id()
        );
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|error| HookError::new(format!("open {}: {error}", self.path.display())))?;
        file.write_all(line.as_bytes())
            .map_err(|error| HookError::new(format!("write {}: {error}", self.path.display())))
    }
}

impl Unit for Recorder {
    async fn assign(
        &mut self,
        ctx: &Context,
        shard: &ShardName,
        role: Role,
        epoch: u64,
    ) -> Result<(), HookError> {
        self.record(ctx, "start", shard, role.name(), epoch)?;
        self.record(ctx, "done", shard, role.name(), epoch)
    }

    async fn quiesce(&mut self, ctx: &Context, shard: &ShardName) -> Result<(), HookError> {
        let epoch = ctx.role(shard).map_or(0, |(_, epoch)| epoch);
        self.record(ctx, "start", shard, "QUIESCED", epoch)?;
        self.record(ctx, "done", shard, "QUIESCED", epoch)
    }

    async fn remove(&mut self, ctx: &Context, shard: &ShardName) -> Result<(), HookError> {
        let epoch = ctx.role(shard).map_or(0, |(_, epoch)| epoch);
        self.record(ctx, "start", shard, "NONE", epoch)?;
        self.record(ctx, "done", shard, "NONE", epoch)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let Some(path) = std::env::var_os("TANDEM_TEST_RECORD") else {
        eprintln!("tandem-test-unit: TANDEM_TEST_RECORD is not set");
        std::process::exit(2);
    };
    if std::env::var("TANDEM_TEST_CHILD").is_ok_and(|value| value == "1") {
        // A descendant in the unit's process group; tandem must never leave it behind.
        let child = std::process::Command::new("sleep").arg("3600").spawn();
        if let Ok(child) = child {
            eprintln!("tandem-test-unit: child pid {}", child.id());
        }
    }
    if let Err(error) = tandem::run(Recorder { path: path.into() }).await {
        eprintln!("tandem-test-unit: {error}");
        std::process::exit(1);
    }
}
