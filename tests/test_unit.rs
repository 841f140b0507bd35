//! `tandem-test-unit`: the unit the end-to-end tests and the benchmark run. It records every
//! hook with a CLOCK_MONOTONIC timestamp (shared by every process of the machine) in the file
//! named by `TANDEM_TEST_RECORD`, one line per event:
//!
//! `<monotonic ns> <unit> <generation> <pid> <event> <shard> <role> <epoch>`
//!
//! where event is `start` (a hook begins) or `done` (it returned), and role is the role asked
//! for (`QUIESCED` for quiesce, `NONE` for remove). With `TANDEM_TEST_CHILD=1` it also starts a
//! `sleep` child in its process group, to show that no descendant outlives its unit.
//!
//! With `TANDEM_TEST_WRITES=1` it also writes the checkpoint while ACTIVE: key `n` gets 1, 2, 3,
//! ... (a `sync` commit each, every 2 ms), each acknowledged value recorded as event `acked`
//! with the value in the role field; an ACTIVE hook records event `resume` with the value its
//! replica holds. With `TANDEM_TEST_BULK=<count>` the first ACTIVE also writes `count` sections
//! of 1 KiB (`b0000000`..), for state-transfer tests.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tandem::{monotonic_ns, Context, HookError, Role, ShardName, Unit};

struct Recorder {
    path: PathBuf,
    /// Write the checkpoint while ACTIVE (and how many bulk sections), once started.
    writes: Option<u64>,
    writing: bool,
}

/// The value of key `n` in the local replica of `shard`.
async fn stored(ctx: &Context, shard: &ShardName) -> Result<u64, HookError> {
    let value = ctx
        .checkpoint(shard)
        .get("n")
        .await
        .map_err(|error| HookError::new(format!("read n: {error}")))?;
    Ok(value
        .and_then(|value| String::from_utf8(value).ok())
        .and_then(|text| text.parse().ok())
        .unwrap_or(0))
}

/// Writes `n` (and the bulk sections once) for every shard the unit acts ACTIVE for.
async fn write_loop(ctx: Context, recorder: Arc<Recorder>, bulk: u64) {
    let mut next: BTreeMap<ShardName, (u64, u64)> = BTreeMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(2)).await;
        for shard in ctx.active_shards() {
            let Some((_, epoch)) = ctx.role(&shard) else {
                continue;
            };
            let n = match next.get(&shard) {
                Some((at, n)) if *at == epoch => *n,
                _ => {
                    let Ok(held) = stored(&ctx, &shard).await else {
                        continue;
                    };
                    if bulk > 0 && write_bulk(&ctx, &shard, bulk).await.is_err() {
                        continue;
                    }
                    held + 1
                }
            };
            match ctx.checkpoint(&shard).put("n", n.to_string()).await {
                Ok(_) => {
                    let _ = recorder.record(&ctx, "acked", &shard, &n.to_string(), epoch);
                    next.insert(shard, (epoch, n + 1));
                }
                Err(_) => {
                    next.remove(&shard);
                }
            }
        }
    }
}

/// The bulk sections, unless a previous ACTIVE wrote them.
async fn write_bulk(ctx: &Context, shard: &ShardName, count: u64) -> Result<(), tandem::DataError> {
    let checkpoint = ctx.checkpoint(shard);
    if checkpoint.get("bulk-done").await?.is_some() {
        return Ok(());
    }
    let value = vec![b'v'; 1024];
    let mut first = 0;
    while first < count {
        let mut transaction = checkpoint.transaction();
        for index in first..(first + 256).min(count) {
            transaction = transaction.put(format!("b{index:07}"), value.clone());
        }
        transaction.commit_sync().await?;
        first += 256;
    }
    checkpoint.put("bulk-done", "1").await?;
    Ok(())
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
        if let Some(bulk) = self.writes {
            if !self.writing {
                self.writing = true;
                let recorder = Arc::new(Recorder {
                    path: self.path.clone(),
                    writes: None,
                    writing: false,
                });
                tokio::spawn(write_loop(ctx.clone(), recorder, bulk));
            }
            if role == Role::Active {
                let held = stored(ctx, shard).await?;
                self.record(ctx, "resume", shard, &held.to_string(), epoch)?;
            }
        }
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
    let writes = std::env::var("TANDEM_TEST_WRITES")
        .is_ok_and(|value| value == "1")
        .then(|| {
            std::env::var("TANDEM_TEST_BULK")
                .ok()
                .and_then(|count| count.parse().ok())
                .unwrap_or(0)
        });
    let recorder = Recorder {
        path: path.into(),
        writes,
        writing: false,
    };
    if let Err(error) = tandem::run(recorder).await {
        eprintln!("tandem-test-unit: {error}");
        std::process::exit(1);
    }
}
